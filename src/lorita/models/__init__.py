"""Small plain reference models for the CLI and benchmarks (no LoRITa baked in: use
:func:`lorita.factorize`): ``fcn`` (:mod:`lorita.models.fcn`), ``resnet20`` / ``resnet18``
(:mod:`lorita.models.resnet`), ``vgg16`` (:mod:`lorita.models.vgg`), ``vit`` (:mod:`lorita.models.vit`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from lorita.models.fcn import FCN
from lorita.models.resnet import resnet18, resnet20
from lorita.models.vgg import vgg16
from lorita.models.vit import VIT_TARGETS, vit

__all__ = ["FCN", "MODELS", "build_model", "default_targets"]


MODELS: dict[str, Callable[..., nn.Module]] = {
    "fcn": FCN,
    "resnet20": resnet20,  # lorita.models.resnet: He et al. CIFAR ResNet-20, option-A shortcuts
    "resnet18": resnet18,  # lorita.models.resnet: CIFAR ResNet-18, projection shortcuts
    "vgg16": vgg16,  # lorita.models.vgg: CIFAR VGG-16 with BatchNorm
    "vit": vit,  # lorita.models.vit: small SimpleViT for 32x32, patch 4 (qkv="joint" | "separate")
}

# Layers LoRITa targets by default per model (None = every Linear/Conv2d), and those excluded.
# CNNs: every conv and the classifier (official LoRITa CIFAR code). ViT: the attention
# projections and MLP Linears of the blocks, not the patch embedding, norms or head (paper).
_DEFAULT_TARGETS: dict[str, tuple[Any, Any]] = {
    "fcn": (None, None),
    "resnet20": (None, None),
    "resnet18": (None, None),
    "vgg16": (None, None),
    "vit": (VIT_TARGETS, None),
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a reference model by name (``"fcn"``, ...) with keyword overrides.

    Raises:
        ValueError: unknown name (the message lists the known ones), or kwargs the model rejects.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as exc:  # a bad model_kwargs entry: a wrong value given by the user
        raise ValueError(
            f"model {name!r} rejects model_kwargs {kwargs}: {exc}; see lorita.models.{MODELS[name].__name__}"
        ) from None


def default_targets(name: str) -> tuple[Any, Any]:
    """``(target_modules, exclude_modules)`` LoRITa uses for a reference model by default."""
    return _DEFAULT_TARGETS.get(name, (None, None))

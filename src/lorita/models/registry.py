"""The reference-model registry: ``MODELS`` (name → constructor), ``DEFAULT_CFGS`` (name →
timm-style ``_cfg``), :func:`build_model` and :func:`default_targets`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from lorita.models import fcn as fcn_mod
from lorita.models import resnet as resnet_mod
from lorita.models import vgg as vgg_mod
from lorita.models import vit as vit_mod
from lorita.models.fcn import FCN
from lorita.models.resnet import resnet18, resnet20
from lorita.models.vgg import vgg16
from lorita.models.vit import vit

__all__ = ["MODELS", "DEFAULT_CFGS", "build_model", "default_targets"]


MODELS: dict[str, Callable[..., nn.Module]] = {
    "fcn": FCN,
    "resnet20": resnet20,  # lorita.models.resnet: He et al. CIFAR ResNet-20, option-A shortcuts
    "resnet18": resnet18,  # lorita.models.resnet: CIFAR ResNet-18, projection shortcuts
    "vgg16": vgg16,  # lorita.models.vgg: CIFAR VGG-16 with BatchNorm
    "vit": vit,  # lorita.models.vit: small SimpleViT for 32x32, patch 4 (qkv="joint" | "separate")
}

#: Per model, its ``DEFAULT_CFG`` (timm's ``_cfg``): dataset, input shape, classes and the layers
#: LoRITa targets by default. CNNs: every conv and the classifier (official LoRITa CIFAR code).
#: ViT: the attention projections and MLP Linears of the blocks, not the patch embedding, norms or
#: head (paper).
DEFAULT_CFGS: dict[str, dict[str, Any]] = {
    "fcn": fcn_mod.DEFAULT_CFG,
    "resnet20": resnet_mod.RESNET20_CFG,
    "resnet18": resnet_mod.RESNET18_CFG,
    "vgg16": vgg_mod.DEFAULT_CFG,
    "vit": vit_mod.DEFAULT_CFG,
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
    cfg = DEFAULT_CFGS.get(name, {})
    return cfg.get("target_modules"), cfg.get("exclude_modules")

"""Small plain reference models for the CLI and benchmarks (no LoRITa baked in: use
:func:`lorita.factorize`).

CIFAR models live in their own modules and are registered here: ``resnet20`` / ``resnet18``
(:mod:`lorita.resnet`), ``vgg16`` (:mod:`lorita.vgg`), ``vit`` (:mod:`lorita.vit`).

* :class:`FCN` — the MNIST fully connected net of the paper's first experiment family
  (arXiv 2405.03089, official ``arch/fcn.py``): ``Flatten → Linear(in, h₁) → ReLU → … →
  Linear(h_L, classes)``; default 784-512-512-512-10 (930,816 weights, 932,362 params with biases).
  With ``batch_norm=True`` each hidden Linear is followed by ``BatchNorm1d`` (the official code
  also normalizes the logits; we do not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from lorita.resnet import resnet18, resnet20
from lorita.vgg import vgg16
from lorita.vit import VIT_TARGETS, vit

__all__ = ["FCN", "MODELS", "build_model", "default_targets"]


class FCN(nn.Module):
    """Fully connected classifier.

    Args:
        in_features: flattened input size (784 for MNIST).
        hidden: widths of the hidden layers.
        num_classes: output size.
        batch_norm: add ``BatchNorm1d`` after every hidden Linear.

    Input ``(B, *)`` flattened to ``(B, in_features)``; output logits ``(B, num_classes)``.
    Layer names: ``layers.0``, ``layers.1``, … for the Linears (``layers.{i}`` indices skip the
    activations), e.g. ``layers.0`` is 784→512 for the default.
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (512, 512, 512),
        num_classes: int = 10,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        prev = in_features
        for h in hidden:
            mods.append(nn.Linear(prev, h))
            if batch_norm:
                mods.append(nn.BatchNorm1d(h))
            mods.append(nn.ReLU())
            prev = h
        mods.append(nn.Linear(prev, num_classes))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "fcn": FCN,
    "resnet20": resnet20,  # lorita.resnet: He et al. CIFAR ResNet-20, option-A shortcuts
    "resnet18": resnet18,  # lorita.resnet: CIFAR ResNet-18, projection shortcuts
    "vgg16": vgg16,  # lorita.vgg: CIFAR VGG-16 with BatchNorm
    "vit": vit,  # lorita.vit: small SimpleViT for 32x32, patch 4 (qkv="joint" | "separate")
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
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as exc:  # a bad --model-kwargs entry
        raise TypeError(
            f"model {name!r} rejects model_kwargs {kwargs}: {exc}; see lorita.models.{MODELS[name].__name__}"
        ) from None


def default_targets(name: str) -> tuple[Any, Any]:
    """``(target_modules, exclude_modules)`` LoRITa uses for a reference model by default."""
    return _DEFAULT_TARGETS.get(name, (None, None))

"""The MNIST fully connected net of the paper's first experiment family (arXiv 2405.03089,
official ``arch/fcn.py``): ``Flatten → Linear(in, h₁) → ReLU → … → Linear(h_L, classes)``; default
784-512-512-512-10 (930,816 weights, 932,362 params with biases). With ``batch_norm=True`` each
hidden Linear is followed by ``BatchNorm1d`` (the official code also normalizes the logits; we do not).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["FCN"]


#: timm's ``_cfg`` habit: what the CLI and benchmarks need to know about ``fcn`` in one place.
DEFAULT_CFG: dict = {
    "dataset": "mnist",  # the dataset it is built for
    "input_shape": (1, 28, 28),  # one sample, without the batch axis
    "num_classes": 10,
    "target_modules": None,  # LoRITa's default targets (None: every Linear/Conv2d)
    "exclude_modules": None,
    "source": "LoRITa §4.1 MNIST FCN (784-512^3-10)",
}


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

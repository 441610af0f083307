"""CIFAR VGG with BatchNorm, plain PyTorch (no LoRITa baked in: use :func:`lorita.factorize`).

The CIFAR variant of Simonyan & Zisserman's VGG used by the official LoRITa code
(``arch/vgg.py``) and most CIFAR work: 3×3 convs (padding 1, **no bias**) each followed by
BatchNorm and ReLU, 2×2 max-pooling at every ``"M"``, and a single ``Linear(512, classes)``
classifier on the 1×1×512 map (no 4096-wide layers). VGG-16 (``cfg="vgg16"``): 13 convs,
14,724,042 params and 313.2 M MACs per 32×32 image (paper-notes §8).

Module names: ``features.{i}`` (``i`` is the index in the Sequential: conv, BN, ReLU, pool, …)
and ``classifier``. LoRITa targets every conv and the classifier by default (official code).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["VGG", "VGG_CFGS", "vgg16"]

VGG_CFGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


#: timm's ``_cfg`` habit: what the CLI and benchmarks need to know about ``vgg16`` in one place.
DEFAULT_CFG: dict = {
    "dataset": "cifar10",  # the dataset it is built for
    "input_shape": (3, 32, 32),  # one sample, without the batch axis
    "num_classes": 10,
    "target_modules": None,  # LoRITa's default targets (None: every Linear/Conv2d)
    "exclude_modules": None,
    "source": "CIFAR VGG-16 with BatchNorm; LoRITa §4.2",
}


class VGG(nn.Module):
    """VGG-BN for 32×32 inputs.

    Args:
        cfg: a name in :data:`VGG_CFGS` or a sequence of widths and ``"M"`` (max-pool).
        num_classes: classifier outputs.
        width_mult: scales every conv width (``max(1, round(w · width_mult))``); 1.0 is the
            standard model, small values make fast test models.
        in_channels: image channels.

    Input ``(B, in_channels, 32, 32)`` (5 pools → 1×1); output logits ``(B, num_classes)``.

    Raises:
        ValueError: unknown cfg name, bad width or a cfg without convs.
    """

    def __init__(
        self,
        cfg: str | Sequence[int | str] = "vgg16",
        num_classes: int = 10,
        width_mult: float = 1.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if isinstance(cfg, str):
            if cfg not in VGG_CFGS:
                raise ValueError(f"unknown VGG cfg {cfg!r}; choose one of {sorted(VGG_CFGS)} or pass a list")
            cfg = VGG_CFGS[cfg]
        if not width_mult > 0:
            raise ValueError(f"`width_mult` must be > 0, got {width_mult!r}")
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"VGG cfg entries must be widths >= 1 or 'M', got {v!r}")
            w = max(1, round(v * width_mult))
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        if not any(isinstance(m, nn.Conv2d) for m in layers):
            raise ValueError("VGG cfg has no conv layer")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.features(x)
        return self.classifier(out.mean(dim=(2, 3)))  # the 1×1×C map for 32×32 inputs


def vgg16(num_classes: int = 10, **kwargs) -> VGG:
    """CIFAR VGG-16-BN (14,724,042 params with ``num_classes=10``); kwargs as :class:`VGG`."""
    return VGG("vgg16", num_classes=num_classes, **kwargs)

"""CIFAR ResNets, plain PyTorch (no LoRITa baked in: use :func:`lorita.factorize`).

* :class:`ResNet20` — He et al. 2016 ("Deep Residual Learning", §4.2): a 3×3 conv to 16
  channels, three stages of ``n = 3`` BasicBlocks with 16, 32 and 64 channels (stride 2 at the
  first block of stages 2 and 3), global average pooling and a 64→10 Linear. Shortcuts are
  **option A**: identity, or (where the shape changes) spatial subsampling by 2 plus zero-padding
  of the new channels — no parameters. No conv has a bias (BatchNorm follows every conv).
  PyTorch's default init everywhere (the same init the factors get, so depth 1 and depth N
  start alike). 269,722 params at ``width=16`` (the number paper-notes §8 computes for the official
  ``ResNet_small``), 40.55 M MACs per 32×32 image.
* :class:`ResNet18` — the usual CIFAR variant (kuangliu/pytorch-cifar, the official LoRITa
  ``arch/resnet.py``): a 3×3 stride-1 stem, four stages of two BasicBlocks with 64-128-256-512
  channels, **option B** projection shortcuts (1×1 conv + BatchNorm) where the shape changes,
  4×4 average pooling and a 512→10 Linear. 11,173,962 params, 555.4 M MACs per image.

Module names (what ``target_modules`` sees): ``conv1``, ``bn1``, ``layer{s}.{b}.conv{1,2}``,
``layer{s}.{b}.bn{1,2}``, ``layer{s}.0.shortcut.0`` (ResNet18 projection conv) /
``shortcut.1`` (its BN), ``linear``. LoRITa targets every conv and the classifier by default, as
the official code does for CIFAR (paper-notes §2.2, §2.5); BatchNorm is never factorized.
Note: lorita's factorized 1×1 shortcut puts its square factors on the output side
(``C_out×C_out``), the official code on the input side; the merged layer is the same kind.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet20", "ResNet18", "resnet20", "resnet18"]


#: timm's ``_cfg`` habit: what the CLI and benchmarks need to know about ``resnet20`` in one place.
RESNET20_CFG: dict = {
    "dataset": "cifar10",  # the dataset it is built for
    "input_shape": (3, 32, 32),  # one sample, without the batch axis
    "num_classes": 10,
    "target_modules": None,  # LoRITa's default targets (None: every Linear/Conv2d)
    "exclude_modules": None,
    "source": "He et al. 2016 CIFAR ResNet-20; LoRITa §4.2",
    # `lorita train --model resnet20`'s defaults (flags override; `--recipe none` drops them): the best
    # 15-epoch recipe measured on CIFAR-10 (README "Fronts at equal epochs", benchmarks/results/
    # delayed_factorize.md for the schedule, late_wd.md for the weight decay picked on validation): a third
    # of the epochs plain, then depth 2 from that model.
    "recipe": {"depth": 2, "factorize_at_fraction": 1 / 3, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
               "weight_decay": 4e-3, "epochs": 15, "warmup_epochs": 1.0, "label_smoothing": 0.1, "augment": True},
}


#: timm's ``_cfg`` habit: what the CLI and benchmarks need to know about ``resnet18`` in one place.
RESNET18_CFG: dict = {
    "dataset": "cifar10",  # the dataset it is built for
    "input_shape": (3, 32, 32),  # one sample, without the batch axis
    "num_classes": 10,
    "target_modules": None,  # LoRITa's default targets (None: every Linear/Conv2d)
    "exclude_modules": None,
    "source": "CIFAR ResNet-18 (projection shortcuts); LoRITa §4.2",
}


class _PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::s, ::s]`` zero-padded from ``C_in`` to ``C_out`` channels."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        if planes < in_planes:
            raise ValueError(f"option-A shortcut cannot shrink channels ({in_planes} -> {planes})")
        self.stride = stride
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    """3×3 conv-BN-ReLU, 3×3 conv-BN, plus shortcut, ReLU. ``shortcut``: ``"A"`` (zero-pad) or
    ``"B"`` (1×1 conv + BN), used only where stride or width changes (else identity).

    Input ``(B, in_planes, H, W)``, output ``(B, planes, H/stride, W/stride)``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"`shortcut` must be 'A' or 'B', got {shortcut!r}")
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = _PadShortcut(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _check(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")



def _stages(width: int, depths: list[int], shortcut: str) -> tuple[list[nn.Sequential], int]:
    """Stages of BasicBlocks, widths ``width·2^stage``, stride 2 at the first block of every stage
    but the first; returns the stages and the final channel count."""
    planes, layers = width, []
    for stage, n in enumerate(depths):
        out = width * 2**stage
        blks = []
        for b in range(n):
            blks.append(BasicBlock(planes, out, 2 if (stage > 0 and b == 0) else 1, shortcut))
            planes = out
        layers.append(nn.Sequential(*blks))
    return layers, planes

class ResNet20(nn.Module):
    """CIFAR ResNet-(6n+2) with option-A shortcuts; ``blocks=3`` gives ResNet-20.

    Args:
        num_classes: classifier outputs.
        width: channels of the first stage (stages use ``width``, ``2·width``, ``4·width``);
            16 is the paper's. Smaller widths make fast test models.
        blocks: BasicBlocks per stage (n); 3 → 20 layers, 5 → 32, 9 → 56.
        in_channels: image channels.

    Input ``(B, in_channels, 32, 32)``; output logits ``(B, num_classes)``.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, blocks: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        checks = (("num_classes", num_classes), ("width", width), ("blocks", blocks),
                  ("in_channels", in_channels))
        for n, v in checks:
            _check(n, v)
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, planes = _stages(width, [blocks] * 3, "A")
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class ResNet18(nn.Module):
    """CIFAR ResNet-18 (option-B projection shortcuts).

    Args:
        num_classes: classifier outputs.
        width: channels of the first stage (64 in the standard model; stages double it).
        blocks: BasicBlocks per stage (default ``(2, 2, 2, 2)``).
        in_channels: image channels.

    Input ``(B, in_channels, 32, 32)``; output logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        for n, v in (("num_classes", num_classes), ("width", width), ("in_channels", in_channels)):
            _check(n, v)
        if len(blocks) != 4:
            raise ValueError(f"`blocks` must list 4 stage depths, got {list(blocks)}")
        for v in blocks:
            _check("blocks[i]", v)
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, planes = _stages(width, list(blocks), "B")
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet20(num_classes: int = 10, **kwargs) -> ResNet20:
    """ResNet-20 for CIFAR (269,722 params with ``num_classes=10``); kwargs as :class:`ResNet20`."""
    return ResNet20(num_classes=num_classes, **kwargs)


def resnet18(num_classes: int = 10, **kwargs) -> ResNet18:
    """CIFAR ResNet-18 (11,173,962 params with ``num_classes=10``); kwargs as :class:`ResNet18`."""
    return ResNet18(num_classes=num_classes, **kwargs)

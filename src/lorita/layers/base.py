"""What every lorita layer shares: argument checks, ``adopt``, and the factor-chain storage.

The training forms (LoRITa, arXiv 2405.03089, §2) keep ``depth`` factors in a ``ParameterList``
(:class:`_FactorChain`); the inference forms (§2.9) are two thin layers. The math lives in
:mod:`lorita.linalg`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from lorita import linalg

ForwardMode = Literal["auto", "chain", "merged"]
Init = Literal["default", "preserve"]
_FORWARD_MODES = ("auto", "chain", "merged")
_INITS = ("default", "preserve")


def adopt(new: nn.Module, like: nn.Module, requires_grad: bool) -> nn.Module:
    """Give a freshly built replacement the ``requires_grad`` flag and the train/eval mode of the
    layer it replaces (every ``from_dense``/``to_dense`` ends here); returns ``new``."""
    new.requires_grad_(requires_grad)
    new.train(like.training)
    return new


def _check_depth(depth: int) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"`depth` must be an int >= 1, got {depth!r}")


def _check_mode(mode: str) -> None:
    if mode not in _FORWARD_MODES:
        raise ValueError(f"`forward_mode` must be one of {_FORWARD_MODES}, got {mode!r}")


def _check_init(init: str) -> None:
    if init not in _INITS:
        raise ValueError(f"`init` must be one of {_INITS}, got {init!r}")


def _product_macs(shapes: list[tuple[int, int]]) -> int:
    """MACs of multiplying a chain of matrices in the best of the two linear orders."""
    # shapes are (rows, cols) of F_N, ..., F_1 (left to right). Index loops keep it TorchScript-able.
    n = len(shapes)
    left = 0
    cols = shapes[0][1]
    rows = shapes[0][0]
    for i in range(1, n):
        c = shapes[i][1]
        left += rows * cols * c
        cols = c
    right = 0
    cols = shapes[n - 1][1]
    for i in range(n - 2, -1, -1):
        r = shapes[i][0]
        c = shapes[i][1]
        right += r * c * cols
    return min(left, right)


class _FactorChain(nn.Module):
    """Storage and init shared by the factorized layers: ``factors`` (a ``ParameterList``, input
    side first) and ``bias`` (added after the last factor, or ``None``)."""

    def _build_factors(self, shapes: list[tuple[int, ...]], bias_size: int | None, fan_in: int, kw: dict) -> None:
        self._fan_in = fan_in
        self.factors = nn.ParameterList([nn.Parameter(torch.empty(s, **kw)) for s in shapes])
        if bias_size is not None:
            self.bias = nn.Parameter(torch.empty(bias_size, **kw))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def _fill_dense(self, dense: nn.Module) -> nn.Module:
        """Load the merged weight and the bias into a freshly built dense layer (the merge)."""
        with torch.no_grad():
            merged = self.merged_weight()
            linalg.ensure_finite(merged, "merged weight")
            dense.weight.copy_(merged)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return adopt(dense, self, self.factors[-1].requires_grad)

    def reset_parameters(self) -> None:
        """PyTorch's default init for every factor — ``kaiming_uniform_(a=√5)`` on its own fan-in,
        the paper's init (§2.6) — and the dense layer's default bias init."""
        for f in self.factors:
            nn.init.kaiming_uniform_(f, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self._fan_in) if self._fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)


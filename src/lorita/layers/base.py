"""What every lorita layer shares: argument checks, ``adopt``, and the factor-chain storage.

The training forms (LoRITa, arXiv 2405.03089, §2) keep ``depth`` factors in a ``ParameterList``
(:class:`_FactorChain`); the inference forms (§2.9) are two thin layers. The math lives in
:mod:`lorita.linalg`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from lorita import linalg

ForwardMode = Literal["auto", "chain", "merged"]
Init = Literal["default", "preserve", "balanced"]
FactorSide = Literal["input", "output", "auto"]
_FORWARD_MODES = ("auto", "chain", "merged")
_INITS = ("default", "preserve", "balanced")
INITS = _INITS  # the factor starts ``from_dense(init=...)`` accepts (the CLI offers these)
FACTOR_SIDES = linalg.FACTOR_SIDES  # where the square factors go (``from_dense(factor_side=...)``)


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


def _check_start(init: str, init_scale: float, factor_side: str) -> None:
    """Validate the ``init``, ``init_scale`` and ``factor_side`` arguments of ``from_dense``."""
    _check_init(init)
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not (
        math.isfinite(init_scale) and init_scale > 0
    ):
        raise ValueError(f"`init_scale` must be a finite number > 0, got {init_scale!r}")
    if factor_side not in FACTOR_SIDES:
        raise ValueError(f"`factor_side` must be one of {FACTOR_SIDES}, got {factor_side!r}")


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


class FactorizedLayer(nn.Module):
    """Base of every depth-N training form (LoRITa §2.1), as PEFT's ``BaseTunerLayer`` is of its
    adapters: ``isinstance(m, FactorizedLayer)`` is how lorita asks "is this a factorized layer".

    Subclasses hold ``depth`` and implement ``from_dense`` (classmethod), ``to_dense()`` (the merge,
    giving back a ``dense_type`` module) and :meth:`factor_parameters`.
    """

    dense_type: ClassVar[type] = nn.Module  # subclasses also set ``self.depth``

    def factor_parameters(self) -> Iterator[nn.Parameter]:
        """The factor matrices (the parameters whose weight decay is the Schatten-2/N penalty)."""
        raise NotImplementedError


class LowRankLayer(nn.Module):
    """Base of every inference form (§2.9): ``second(first(x))``, two thin layers of rank ``rank``.

    ``first`` maps the input to ``rank`` channels (weight ``diag(√S_r) Vh_r``, bias-free);
    ``second`` maps ``rank`` to the output (weight ``U_r diag(√S_r)``, the original bias).
    Subclasses implement ``_empty_like(dense, rank)`` (an uninitialized instance shaped like the
    dense layer) and ``to_dense()``; ``dense_type`` is the plain layer type they stand for.
    """

    dense_type: ClassVar[type] = nn.Module  # subclasses also set ``self.rank``, ``self.first``, ``self.second``

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    @classmethod
    def _empty_like(cls, dense: nn.Module, rank: int) -> LowRankLayer:
        raise NotImplementedError

    @classmethod
    def _dense_matrix(cls, dense: nn.Module) -> Tensor:
        """The dense layer's weight as the ``(m, n)`` matrix that is factored (conv: matricized)."""
        return linalg.matricize(dense.weight)

    @classmethod
    def from_factors(cls, dense: nn.Module, a: Tensor, b: Tensor, name: str = "layer") -> LowRankLayer:
        """The two thin layers from ``W ≈ b @ a`` in place of ``dense`` (bias copied from it).

        Args:
            dense: the layer replaced (shapes, hyper-parameters, bias, dtype, device, mode).
            a: ``(r, n)`` — the first (input-side) factor. b: ``(m, r)`` — the second factor,
                ``(m, n)`` the shape of :meth:`_dense_matrix` (conv: ``(C_out, C_in·k·k)``).
            name: the layer's name, for errors.

        Raises:
            ValueError: factor shapes that do not multiply to the dense matrix.
        """
        w = dense.weight
        mat_shape = tuple(cls._dense_matrix(dense).shape)
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != mat_shape:
            raise ValueError(
                f"`{name}`: factors {tuple(b.shape)} @ {tuple(a.shape)} do not give the {mat_shape} weight"
            )
        layer = cls._empty_like(dense, int(a.shape[0]))
        with torch.no_grad():
            layer.first.weight.copy_(a.reshape(layer.first.weight.shape))
            layer.second.weight.copy_(b.reshape(layer.second.weight.shape))
            if dense.bias is not None:
                layer.second.bias.copy_(dense.bias)
        return adopt(layer, dense, w.requires_grad)

    @classmethod
    def from_dense(cls, dense: nn.Module, rank: int, name: str = "layer") -> LowRankLayer:
        """Best rank-``rank`` split of ``dense`` (Eckart–Young on :meth:`_dense_matrix`).

        Raises:
            ValueError: rank outside ``[1, min(m, n)]`` or a non-finite weight (named ``name``).
        """
        a, b = linalg.split_low_rank(cls._dense_matrix(dense).detach(), rank, name=name)
        return cls.from_factors(dense, a, b, name)

    def thin_factors(self) -> tuple[Tensor, Tensor]:
        """``(b, a)`` with ``b (m, r)`` and ``a (r, n)`` matricized: the layer's weight is ``b @ a``."""
        return linalg.matricize(self.second.weight), linalg.matricize(self.first.weight)


class _FactorChain(FactorizedLayer):
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

    def factor_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.factors)

    def _load_start(self, weight: Tensor, init: str, init_scale: float) -> None:
        """Fill the factors with a start for the dense ``(m, n)`` matrix ``weight`` (no grad).

        ``"default"``: keep the fresh default init; ``"preserve"``: identity square factors and
        ``weight`` in the non-square one (``factors[-1]`` for the input side, ``factors[0]`` for
        the output side); ``"balanced"``: :func:`lorita.linalg.balanced_factors`. Every factor is
        then multiplied by ``init_scale^{1/N}``, so the product is ``init_scale`` × the start's
        (for "preserve"/"balanced": ``init_scale·W``). Uses ``self.factor_side`` (resolved).
        """
        fs = list(self.factors)
        d = len(fs)
        with torch.no_grad():
            if init == "balanced":
                mats = linalg.balanced_factors(weight.detach(), d, self.factor_side, float(init_scale))
                for f, m in zip(fs, mats):
                    f.copy_(m.reshape(f.shape))
                return
            if init == "preserve":
                main = d - 1 if self.factor_side == "input" else 0
                for i, f in enumerate(fs):
                    if i == main:
                        f.copy_(weight.reshape(f.shape))
                    else:
                        f.copy_(torch.eye(f.shape[0], dtype=f.dtype, device=f.device))
            if init_scale != 1.0:
                c = float(init_scale) ** (1.0 / d)
                for f in fs:
                    f.mul_(c)

    def reset_parameters(self) -> None:
        """PyTorch's default init for every factor — ``kaiming_uniform_(a=√5)`` on its own fan-in,
        the paper's init (§2.6) — and the dense layer's default bias init."""
        for f in self.factors:
            nn.init.kaiming_uniform_(f, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self._fan_in) if self._fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)


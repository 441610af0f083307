"""Which layer kinds lorita handles, how, and why the others are skipped.

One table per question, used by :mod:`lorita.surgery` (and :mod:`lorita.io` to rebuild files):

* ``nn.Linear`` → :class:`FactorizedLinear` / :class:`LowRankLinear`; skipped if a dimension is 0.
* ``nn.Conv2d``, ``nn.Conv1d`` (``groups=1``) → :class:`FactorizedConv2d` / :class:`FactorizedConv1d`
  and :class:`LowRankConv2d` / :class:`LowRankConv1d`.
* ``nn.MultiheadAttention`` (packed ``in_proj_weight``) → :class:`FactorizedMultiheadAttention`;
  truncated in place, never split (its forward takes packed weights). Separate q/k/v: skipped.
* GPT-2 ``Conv1D`` (Hugging Face, weight ``(in, out)``) → :class:`FactorizedTransposedLinear` /
  :class:`LowRankTransposedLinear`.

Grouped and depthwise convolutions are skipped with their reason: a grouped weight is
block-diagonal, so one SVD of the matricized ``(C_out, C_in/groups·k·k)`` weight is not the
layer's spectrum, and a depthwise kernel (``C_in/groups = 1``) is per channel a ``1 × k·k``
matrix, already rank 1. Parameters shared between modules (tied weights) and a module
registered under two names are skipped by :mod:`lorita.targeting` ("keep them shared").
Checkers return ``None`` when a layer can be handled, else the reason (a short sentence).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from lorita.layers.attention import FactorizedMultiheadAttention, ProjectionView, mha_reason
from lorita.layers.base import FactorizedLayer, LowRankLayer
from lorita.layers.conv import FactorizedConv1d, FactorizedConv2d, LowRankConv1d, LowRankConv2d
from lorita.layers.linear import FactorizedLinear, LowRankLinear
from lorita.layers.transposed import (
    TRANSPOSED_LINEAR_CLASSES,
    FactorizedTransposedLinear,
    LowRankTransposedLinear,
    is_transposed_linear,
)
from lorita.linalg import merge_factors

__all__ = [
    "Checker",
    "KindTable",
    "TRANSPOSED",
    "FACTORIZE_CHECKS",
    "WEIGHT_CHECKS",
    "FACTORIZED_TYPES",
    "LOW_RANK_TYPES",
    "DENSE_TYPES",
    "factorized_class",
    "low_rank_class",
    "dense_reason",
    "effective_matrix_weight",
    "is_transposed_linear",
    "matrix_shape",
]

Checker = Callable[[nn.Module], "str | None"]


class _Transposed:
    """Key standing for every GPT-2-style ``Conv1D`` class (matched by qualified name)."""


TRANSPOSED: type = _Transposed


class KindTable(Mapping):
    """``{layer type: value}`` matched on the exact type, plus GPT-2 ``Conv1D`` under :data:`TRANSPOSED`.

    Exact types (not subclasses), so a user subclass with its own forward is never replaced.
    """

    def __init__(self, table: Mapping[type, object]) -> None:
        self._table = dict(table)

    def _key(self, t: type) -> type:
        if t in self._table:
            return t
        if f"{t.__module__}.{t.__qualname__}" in TRANSPOSED_LINEAR_CLASSES and TRANSPOSED in self._table:
            return TRANSPOSED
        raise KeyError(t)

    def __getitem__(self, t: type) -> object:
        return self._table[self._key(t)]

    def __iter__(self) -> Iterator[type]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


def matrix_shape(module: nn.Module) -> tuple[int, int]:
    """``(out, in·k…)`` of a dense layer's weight in Linear orientation (GPT-2 Conv1D transposed)."""
    w = module.weight
    if is_transposed_linear(module):
        return int(w.shape[1]), int(w.shape[0])
    return int(w.shape[0]), math.prod(int(s) for s in w.shape[1:])


def _zero(module: nn.Module) -> str | None:
    m, n = matrix_shape(module)
    if m == 0 or n == 0:
        return f"weight {tuple(module.weight.shape)} has a zero dimension; there is nothing to factorize"
    return None


def _conv(module: nn.Module) -> str | None:
    name = type(module).__name__
    if module.groups != 1:
        if module.in_channels == module.groups:
            return (
                f"depthwise {name} (groups={module.groups}): each channel's kernel is a "
                f"1×{math.prod(module.kernel_size)} matrix, already rank 1; nothing to factorize"
            )
        return (
            f"{name} with groups={module.groups}: its weight is block-diagonal over groups, so one SVD "
            f"of the matricized weight is not the layer's spectrum; only groups=1 is supported"
        )
    return _zero(module)


def _out_proj(_: nn.Module) -> str | None:
    return (
        "out_proj of an nn.MultiheadAttention is read as a tensor by the attention's forward; target "
        "the attention module itself (both projections are handled)"
    )


def _already(m: nn.Module) -> str | None:
    return f"already factorized (depth={m.depth})"


def _is_low_rank(m: nn.Module) -> str | None:
    return f"already low-rank (rank={m.rank}); merge it first"


def _ok(_: nn.Module) -> str | None:
    return None


FACTORIZED_TYPES: tuple[type, ...] = (FactorizedLayer,)  # isinstance checks: every training form
LOW_RANK_TYPES: tuple[type, ...] = (LowRankLayer,)  # every two-thin-layer form
DENSE_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)

_DENSE_CHECKS: dict[type, Checker] = {
    nn.Linear: _zero,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.MultiheadAttention: mha_reason,
    TRANSPOSED: _zero,
    NonDynamicallyQuantizableLinear: _out_proj,
}

#: What :func:`lorita.factorize` may replace (and why not).
FACTORIZE_CHECKS = KindTable(
    {
        **_DENSE_CHECKS,
        **{t: _already for t in (FactorizedLinear, FactorizedConv1d, FactorizedConv2d,
                                 FactorizedTransposedLinear, FactorizedMultiheadAttention)},
        **{t: _is_low_rank for t in (LowRankLinear, LowRankConv1d, LowRankConv2d, LowRankTransposedLinear)},
    }
)

#: What rank selection, truncation and splitting act on (factorized layers are merged for the SVD).
WEIGHT_CHECKS = KindTable(
    {
        **_DENSE_CHECKS,
        **{t: _ok for t in (FactorizedLinear, FactorizedConv1d, FactorizedConv2d, FactorizedTransposedLinear,
                            FactorizedMultiheadAttention, LowRankLinear, LowRankConv1d, LowRankConv2d,
                            LowRankTransposedLinear)},
    }
)

_FACTORIZED_OF = KindTable(
    {
        nn.Linear: FactorizedLinear,
        nn.Conv1d: FactorizedConv1d,
        nn.Conv2d: FactorizedConv2d,
        nn.MultiheadAttention: FactorizedMultiheadAttention,
        TRANSPOSED: FactorizedTransposedLinear,
    }
)
_LOW_RANK_OF = KindTable(
    {
        nn.Linear: LowRankLinear,
        nn.Conv1d: LowRankConv1d,
        nn.Conv2d: LowRankConv2d,
        TRANSPOSED: LowRankTransposedLinear,
    }
)


def factorized_class(module: nn.Module) -> type:
    """The training-form class for a dense layer (``from_dense(module, depth, init, forward_mode)``).

    Raises:
        TypeError: a layer kind lorita does not factorize.
    """
    try:
        return _FACTORIZED_OF[type(module)]
    except KeyError:
        raise TypeError(f"{type(module).__name__} is not a layer kind lorita can factorize") from None


def low_rank_class(target: object) -> type | None:
    """The two-layer class for a dense layer (``from_dense(module, rank, name)``), or ``None``
    for weights that are truncated in place instead (attention projections)."""
    if isinstance(target, ProjectionView):
        return None
    try:
        return _LOW_RANK_OF[type(target)]
    except KeyError:
        return None


def dense_reason(module: nn.Module) -> str | None:
    """Why a dense layer cannot be handled, or ``None`` (also ``None`` for non-dense kinds)."""
    check = _DENSE_CHECKS.get(type(module), _zero if is_transposed_linear(module) else _ok)
    return check(module)


def effective_matrix_weight(target: object) -> Tensor | None:
    """Linear-orientation weight ``(out, in)`` of a GPT-2 Conv1D (dense or low-rank) or an attention
    projection view, else None."""
    if isinstance(target, ProjectionView):
        return target.weight.detach()
    if is_transposed_linear(target):
        return target.weight.detach().T
    if isinstance(target, LowRankTransposedLinear):  # its to_dense() is the transposed Conv1D
        return merge_factors([target.first.weight, target.second.weight]).detach()
    return None

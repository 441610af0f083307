"""Layers whose weight is stored transposed, ``(in, out)``: Hugging Face's GPT-2 ``Conv1D``.

``transformers.pytorch_utils.Conv1D(nf, nx)`` holds ``weight`` of shape ``(nx, nf)`` = ``(in, out)``
and computes ``y = x @ weight + bias`` — a Linear layer with the weight transposed (GPT-2's
``c_attn``, ``c_proj``, ``c_fc``). lorita reads its weight as the Linear-orientation matrix
``W = weight.T`` of shape ``(out, in)``, so the factor layout, singular values and ranks are exactly
those of an ``nn.Linear`` with the same map, and merges back to the same ``Conv1D`` class with
``weight = W.T`` (the original ``state_dict`` keys and shapes).

The class is recognised by its qualified name, so ``transformers`` is never imported by lorita.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lorita import linalg
from lorita.layers.base import FactorSide, ForwardMode, Init, _check_depth, _check_start, adopt
from lorita.layers.linear import FactorizedLinear, LowRankLinear

__all__ = [
    "TRANSPOSED_LINEAR_CLASSES",
    "is_transposed_linear",
    "FactorizedTransposedLinear",
    "LowRankTransposedLinear",
]

# Fully qualified names of transposed-weight linear layers (module path moved between versions).
TRANSPOSED_LINEAR_CLASSES: frozenset[str] = frozenset(
    {"transformers.pytorch_utils.Conv1D", "transformers.modeling_utils.Conv1D"}
)


def is_transposed_linear(module: object) -> bool:
    """True for a GPT-2-style ``Conv1D``: weight ``(in, out)``, ``y = x @ weight + bias``."""
    t = type(module)
    return f"{t.__module__}.{t.__qualname__}" in TRANSPOSED_LINEAR_CLASSES


def _new_dense(cls: type, in_features: int, out_features: int, like: Tensor) -> nn.Module:
    """A fresh ``cls(nf=out, nx=in)`` on ``like``'s device and dtype (HF ``Conv1D`` signature)."""
    dense = cls(out_features, in_features)
    return dense.to(device=like.device, dtype=like.dtype)


class FactorizedTransposedLinear(FactorizedLinear):
    """Depth-N training form of a transposed-weight linear layer (GPT-2 ``Conv1D``).

    Identical to :class:`lorita.FactorizedLinear` (factors in Linear orientation, ``(in, in)`` …
    ``(out, in)``, bias ``(out,)``); only :meth:`from_dense` / :meth:`to_dense` transpose, so
    merging gives back the original class with ``weight (in, out)``.
    """

    def __init__(self, *args, dense_cls: type | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dense_cls = dense_cls

    @classmethod
    def from_dense(
        cls,
        layer: nn.Module,
        depth: int,
        init: Init = "default",
        forward_mode: ForwardMode = "auto",
        init_scale: float = 1.0,
        factor_side: FactorSide = "input",
    ) -> FactorizedTransposedLinear:
        """Build the depth-N form of a ``Conv1D`` (weight ``(in, out)``); see FactorizedLinear.from_dense.

        Raises:
            TypeError: ``layer`` is not a transposed-weight linear layer.
            ValueError: bad ``depth``, ``init`` or ``forward_mode``.
        """
        if not is_transposed_linear(layer):
            raise TypeError(f"expected a GPT-2 style Conv1D, got {type(layer).__name__}")
        _check_depth(depth)
        _check_start(init, init_scale, factor_side)
        w = layer.weight
        n_in, n_out = int(w.shape[0]), int(w.shape[1])
        new = cls(
            n_in, n_out, depth=depth, bias=layer.bias is not None, forward_mode=forward_mode,
            device=w.device, dtype=w.dtype, dense_cls=type(layer), factor_side=factor_side,
        )
        new._load_start(w.T, init, init_scale)
        with torch.no_grad():
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        return adopt(new, layer, w.requires_grad)

    def to_dense(self) -> nn.Module:
        """Merge into the original ``Conv1D`` class: ``weight = (F_N ⋯ F_1).T``, same bias.

        Raises:
            TypeError: the layer was not built by :meth:`from_dense` (the dense class is unknown).
            ValueError: the merged weight holds NaN/Inf.
        """
        if self.dense_cls is None:
            raise TypeError("FactorizedTransposedLinear built without `dense_cls`; build it with from_dense")
        w = self.factors[-1]
        dense = _new_dense(self.dense_cls, self.in_features, self.out_features, w)
        with torch.no_grad():
            merged = self.merged_weight()
            linalg.ensure_finite(merged, "merged weight")
            dense.weight.copy_(merged.T)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return adopt(dense, self, w.requires_grad)


class LowRankTransposedLinear(LowRankLinear):
    """Rank-r split of a transposed-weight linear layer: ``Linear(in, r) → Linear(r, out)``.

    Same forward and costs as :class:`lorita.LowRankLinear`; :meth:`to_dense` gives back the
    original ``Conv1D`` class.
    """

    def __init__(self, *args, dense_cls: type | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dense_cls = dense_cls

    @classmethod
    def _dense_matrix(cls, dense: nn.Module) -> Tensor:
        return dense.weight.T  # Conv1D keeps weight (in, out); the matrix factored is (out, in)

    @classmethod
    def _empty_like(cls, dense: nn.Module, rank: int) -> LowRankTransposedLinear:
        w = dense.weight
        return cls(
            int(w.shape[0]), int(w.shape[1]), rank, dense.bias is not None, device=w.device, dtype=w.dtype,
            dense_cls=type(dense),
        )

    @classmethod
    def from_dense(cls, layer: nn.Module, rank: int, name: str = "conv1d") -> LowRankTransposedLinear:
        """Best rank-``rank`` split of a ``Conv1D`` (Eckart–Young on ``W = weight.T``).

        Raises:
            TypeError: not a transposed-weight linear layer.
            ValueError: rank outside ``[1, min(in, out)]`` or a non-finite weight (named ``name``).
        """
        if not is_transposed_linear(layer):
            raise TypeError(f"`{name}`: expected a GPT-2 style Conv1D, got {type(layer).__name__}")
        return super().from_dense(layer, rank, name)

    def to_dense(self) -> nn.Module:
        """The original ``Conv1D`` class with ``weight = (second.weight @ first.weight).T``."""
        if self.dense_cls is None:
            raise TypeError("LowRankTransposedLinear built without `dense_cls`; build it with from_dense")
        w = self.second.weight
        dense = _new_dense(self.dense_cls, self.in_features, self.out_features, w)
        with torch.no_grad():
            dense.weight.copy_(linalg.merge_factors([self.first.weight, self.second.weight]).T)
            if self.second.bias is not None:
                dense.bias.copy_(self.second.bias)
        return adopt(dense, self, w.requires_grad)

"""``nn.MultiheadAttention``: its packed in-projection and its out-projection as LoRITa layers.

``nn.MultiheadAttention`` keeps the query/key/value projections packed in one parameter
``in_proj_weight`` ``(3E, E)`` and the output projection in ``out_proj`` ``(E, E)``, and its
forward hands these *tensors* to :func:`torch.nn.functional.multi_head_attention_forward`. A
projection can therefore not be swapped for a module; lorita handles the attention module as a
whole:

* :class:`FactorizedMultiheadAttention` (training form) — children ``in_proj``
  (:class:`~lorita.FactorizedLinear` ``E → 3E``, Q, K and V factorized jointly as in the paper's
  ViT, arXiv 2405.03089 §2 / official ``arch/simplevit.py``) and ``out_proj``
  (:class:`~lorita.FactorizedLinear` ``E → E``). Its forward multiplies each chain of factors
  (autograd flows through the product) and calls the same functional attention. Merging gives
  back an ``nn.MultiheadAttention`` with identical hyper-parameters and ``state_dict`` keys.
* :class:`ProjectionView` — how rank selection and truncation address the two weights of a dense
  ``nn.MultiheadAttention`` ``attn``: as ``attn.in_proj`` and ``attn.out_proj`` (the names of the
  factorized children, so ranks chosen on either form apply to both). Truncation rewrites the
  weight in place; the layer is never split into two thin layers (its forward takes packed
  weights), so ``to_low_rank`` keeps it dense with the rank-``r`` weight.

Only attention with ``kdim == vdim == embed_dim`` (one packed ``in_proj_weight``) is supported;
separate q/k/v weights are skipped with that reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorita.layers.base import (
    FACTOR_SIDES,
    FactorizedLayer,
    FactorSide,
    ForwardMode,
    Init,
    _check_depth,
    _check_start,
    adopt,
)
from lorita.layers.linear import FactorizedLinear

__all__ = ["FactorizedMultiheadAttention", "ProjectionView", "mha_reason", "PROJECTIONS"]

PROJECTIONS = ("in_proj", "out_proj")


def mha_reason(mha: nn.Module) -> str | None:
    """Why an ``nn.MultiheadAttention`` cannot be handled (None when it can)."""
    if not getattr(mha, "_qkv_same_embed_dim", True) or getattr(mha, "in_proj_weight", None) is None:
        return (
            f"MultiheadAttention with kdim={mha.kdim}, vdim={mha.vdim} != embed_dim={mha.embed_dim} keeps "
            f"separate q/k/v weights; only the packed in_proj_weight is supported"
        )
    if mha.embed_dim == 0:
        return "MultiheadAttention with embed_dim=0 has nothing to factorize"
    return None


class ProjectionView:
    """One projection of a dense ``nn.MultiheadAttention``, seen as a weight layer.

    Attributes:
        owner: the attention module. name: ``"in_proj"`` (weight ``(3E, E)``) or ``"out_proj"``
            (weight ``(E, E)``).

    ``weight`` is the owner's live parameter, so ``view.weight.copy_(w)`` rewrites it in place.
    """

    def __init__(self, owner: nn.Module, name: str) -> None:
        if name not in PROJECTIONS:
            raise ValueError(f"`name` must be one of {PROJECTIONS}, got {name!r}")
        self.owner = owner
        self.name = name

    @property
    def weight(self) -> nn.Parameter:
        return self.owner.in_proj_weight if self.name == "in_proj" else self.owner.out_proj.weight

    def __repr__(self) -> str:
        return f"ProjectionView({self.name}, weight={tuple(self.weight.shape)})"


class FactorizedMultiheadAttention(FactorizedLayer):
    """``nn.MultiheadAttention`` whose two projections are depth-N factor chains (training form).

    Children: ``in_proj`` — :class:`FactorizedLinear` ``(E → 3E)``, bias ``(3E,)`` if the attention
    has biases; ``out_proj`` — :class:`FactorizedLinear` ``(E → E)``. ``bias_k``/``bias_v``
    ``(1, 1, E)`` are kept as they were. Forward signature and outputs are those of
    ``nn.MultiheadAttention.forward`` (``(attn_output, attn_weights)``); the projections always
    run "merged" (the factors are multiplied once per call, cost independent of the batch).

    ``_qkv_same_embed_dim`` is reported ``False`` so that PyTorch's fused fast paths (in
    ``nn.TransformerEncoderLayer``), which read dense packed weights, are never taken; the
    standard path computes the same result.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        depth: int = 2,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        factor_side: FactorSide = "input",
    ) -> None:
        super().__init__()
        _check_depth(depth)
        if factor_side not in FACTOR_SIDES:
            raise ValueError(f"`factor_side` must be one of {FACTOR_SIDES}, got {factor_side!r}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"`embed_dim`={embed_dim} must be divisible by `num_heads`={num_heads}")
        kw = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = self.vdim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.add_zero_attn = add_zero_attn
        self.depth = depth
        self._qkv_same_embed_dim = False  # see class docstring: keeps fused fast paths off
        self.factor_side = factor_side  # as asked; each projection resolves "auto" for its own shape
        self.in_proj = FactorizedLinear(embed_dim, 3 * embed_dim, depth, bias, "merged", factor_side=factor_side, **kw)
        self.out_proj = FactorizedLinear(embed_dim, embed_dim, depth, bias, "merged", factor_side=factor_side, **kw)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.zeros((1, 1, embed_dim), **kw))
            self.bias_v = nn.Parameter(torch.zeros((1, 1, embed_dim), **kw))
        else:
            self.bias_k = self.bias_v = None

    dense_type = nn.MultiheadAttention

    def factor_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.in_proj.factors
        yield from self.out_proj.factors

    @property
    def in_proj_bias(self) -> Tensor | None:
        """The packed q/k/v bias ``(3E,)`` (read by ``nn.TransformerEncoderLayer``'s checks)."""
        return self.in_proj.bias

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: inputs ``(L, N, E)`` (``(N, L, E)`` if
        ``batch_first``) or unbatched ``(L, E)``; returns ``(output, weights or None)``."""
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (t.transpose(1, 0) for t in (query, key, value))
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads,
            self.in_proj._product(), self.in_proj.bias, self.bias_k, self.bias_v, self.add_zero_attn,
            self.dropout, self.out_proj._product(), self.out_proj.bias, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal,
        )
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights

    @classmethod
    def from_dense(
        cls,
        mha: nn.MultiheadAttention,
        depth: int,
        init: Init = "default",
        forward_mode: ForwardMode = "auto",
        init_scale: float = 1.0,
        factor_side: FactorSide = "input",
    ) -> FactorizedMultiheadAttention:
        """Build the depth-N form of ``mha`` (packed ``in_proj_weight`` only).

        Args:
            mha: the dense attention; ``in_proj_weight`` ``(3E, E)``, ``out_proj.weight`` ``(E, E)``.
            depth: factors per projection (>= 1).
            init: ``"default"`` (fresh default init of every factor, biases copied; the paper's),
                ``"preserve"`` (identity factors: computes exactly what ``mha`` did) or
                ``"balanced"`` (each projection's weight spread evenly over its factors,
                :func:`lorita.linalg.balanced_factors`).
            forward_mode: accepted for a uniform signature; the projections always run merged.
            init_scale: each factor × ``init_scale^{1/N}`` (product ``init_scale·W``).
            factor_side: for both projections (:class:`FactorizedLinear`; ``"auto"`` resolves per
                projection: ``in_proj`` E→3E keeps the ``E×E`` input side).

        Raises:
            ValueError: separate q/k/v weights, bad ``depth``/``init``/``init_scale``/``factor_side``.
        """
        _check_depth(depth)
        _check_start(init, init_scale, factor_side)
        reason = mha_reason(mha)
        if reason is not None:
            raise ValueError(reason + "; exclude the layer")
        w = mha.in_proj_weight
        new = cls(
            mha.embed_dim, mha.num_heads, depth, mha.dropout, mha.in_proj_bias is not None,
            mha.bias_k is not None, mha.add_zero_attn, mha.batch_first, device=w.device, dtype=w.dtype,
            factor_side=factor_side,
        )
        pairs = ((new.in_proj, mha.in_proj_weight, mha.in_proj_bias),
                 (new.out_proj, mha.out_proj.weight, mha.out_proj.bias))
        with torch.no_grad():
            for fact, weight, bias in pairs:
                fact._load_start(weight, init, init_scale)
                if bias is not None:
                    fact.bias.copy_(bias)
            if mha.bias_k is not None:
                new.bias_k.copy_(mha.bias_k)
                new.bias_v.copy_(mha.bias_v)
        return adopt(new, mha, w.requires_grad)

    def to_dense(self) -> nn.MultiheadAttention:
        """Merge: an ``nn.MultiheadAttention`` with ``in_proj_weight = in_proj`` factors' product
        and ``out_proj.weight`` likewise (float64 accumulation), biases copied.

        Raises:
            ValueError: a merged weight holds NaN/Inf (names the projection).
        """
        w = self.in_proj.factors[-1]
        dense = nn.MultiheadAttention(
            self.embed_dim, self.num_heads, self.dropout, self.in_proj.bias is not None,
            self.bias_k is not None, self.add_zero_attn, batch_first=self.batch_first,
            device=w.device, dtype=w.dtype,
        )
        with torch.no_grad():
            for name, fact in (("in_proj", self.in_proj), ("out_proj", self.out_proj)):
                try:
                    merged = fact.to_dense()
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
                target = dense.in_proj_weight if name == "in_proj" else dense.out_proj.weight
                target.copy_(merged.weight)
                if fact.bias is not None:
                    (dense.in_proj_bias if name == "in_proj" else dense.out_proj.bias).copy_(fact.bias)
            if self.bias_k is not None:
                dense.bias_k.copy_(self.bias_k)
                dense.bias_v.copy_(self.bias_v)
        return adopt(dense, self, w.requires_grad)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, depth={self.depth}"

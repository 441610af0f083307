"""Linear layer forms: :class:`FactorizedLinear` (training) and :class:`LowRankLinear` (inference).

* :class:`FactorizedLinear` — ``depth − 1`` square, bias-free ``in×in`` factors, then one
  ``in→out`` factor carrying the bias: ``y = F_N ⋯ F_1 x + b`` (LoRITa, arXiv 2405.03089, §2 and
  the authors' ``arch/*.py``).
* :class:`LowRankLinear` — ``Linear(in, r, bias=False)`` then ``Linear(r, out)`` (paper §2.9,
  "deployable", never realized by the authors' code).

Each class converts from and to the plain layer (``from_dense`` / ``to_dense``); the math lives
in :mod:`lorita.linalg`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorita import linalg
from lorita.layers.base import (
    FactorSide,
    ForwardMode,
    Init,
    LowRankLayer,
    _check_depth,
    _check_mode,
    _check_start,
    _FactorChain,
    _product_macs,
    adopt,
)


class FactorizedLinear(_FactorChain):
    """``nn.Linear`` over-parameterized as ``depth`` linear factors (LoRITa training form).

    Parameters (``factor_side="input"``, the paper's): ``factors[0..depth-2]`` of shape
    ``(in, in)`` (bias-free), ``factors[depth-1]`` of shape ``(out, in)``; with
    ``factor_side="output"``: ``factors[0]`` ``(out, in)`` then ``depth−1`` square ``(out, out)``;
    ``"auto"`` picks the smaller square size (output when ``out < in``) and is stored resolved in
    ``self.factor_side``. ``bias`` ``(out,)`` or ``None``, added after the last factor. The effective weight is
    ``W = factors[-1] @ ⋯ @ factors[0]`` (paper §2.1). Plain weight decay on the factors is, at
    the optimum, ``depth · Σ σ_j(W)^{2/depth}`` (paper §3).

    ``forward_mode``: ``"chain"`` applies the factors one after another (cost grows with the
    batch), ``"merged"`` first multiplies the factors then runs one matmul (cost independent of
    the batch), ``"auto"`` picks the cheaper by MAC count for the actual input shape. Both give
    the same output and exact gradients (autograd through the product).

    Input ``(*, in)``, output ``(*, out)``.
    """

    dense_type = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        depth: int = 2,
        bias: bool = True,
        forward_mode: ForwardMode = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        factor_side: FactorSide = "input",
    ) -> None:
        super().__init__()
        _check_depth(depth)
        _check_mode(forward_mode)
        kw = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.depth = depth
        self.forward_mode = forward_mode
        self.factor_side = linalg.resolve_factor_side(factor_side, out_features, in_features)
        self._square = in_features if self.factor_side == "input" else out_features
        sq = [(self._square, self._square)] * (depth - 1)
        main = [(out_features, in_features)]
        shapes = sq + main if self.factor_side == "input" else main + sq
        self._build_factors(shapes, out_features if bias else None, in_features, kw)

    # -- math ---------------------------------------------------------------------------------
    def merged_weight(self) -> Tensor:
        """Exact merged weight ``(out, in)``, accumulated in float64 (see :func:`linalg.merge_factors`)."""
        return linalg.merge_factors(list(self.factors))

    def _product(self) -> Tensor:
        fs: list[Tensor] = [f for f in self.factors]
        if len(fs) == 1:
            return fs[0]
        return torch.linalg.multi_dot(fs[::-1])

    def mode_for(self, rows: int) -> str:
        """``"chain"`` or ``"merged"``: the cheaper forward for ``rows`` input vectors (by MACs)."""
        if self.forward_mode != "auto":
            return self.forward_mode
        n, m, d, k = self.in_features, self.out_features, self.depth, self._square
        chain = rows * (k * k * (d - 1) + n * m)
        if self.factor_side == "input":  # (rows, cols) of F_N, ..., F_1
            shapes = [(m, n)] + [(k, k) for _ in range(d - 1)]
        else:
            shapes = [(k, k) for _ in range(d - 1)] + [(m, n)]
        merged = (_product_macs(shapes) if d > 1 else 0) + rows * n * m
        return "merged" if merged < chain else "chain"

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // max(self.in_features, 1)
        if self.depth == 1 or self.mode_for(rows) == "merged":
            return F.linear(x, self._product(), self.bias)
        fs: list[Tensor] = [f for f in self.factors]
        for f in fs[:-1]:
            x = F.linear(x, f)
        return F.linear(x, fs[-1], self.bias)

    # -- conversions ----------------------------------------------------------------------------
    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        depth: int,
        init: Init = "default",
        forward_mode: ForwardMode = "auto",
        init_scale: float = 1.0,
        factor_side: FactorSide = "input",
    ) -> FactorizedLinear:
        """Build the depth-N form of ``linear``.

        Args:
            linear: the dense layer; its weight ``(out, in)``, dtype and device are used.
            depth: number of factors N (>= 1).
            init: ``"default"`` — fresh PyTorch default init of every factor, as in the paper
                (the bias is copied); ``"preserve"`` — identity square factors and ``W`` in the
                ``(out, in)`` one, so the layer computes exactly what ``linear`` did;
                ``"balanced"`` — ``W = UΣVᵀ`` spread evenly, ``Σ^{1/N}`` in each factor
                (:func:`lorita.linalg.balanced_factors`): same product, and weight decay equals
                the Schatten-2/N penalty from step 0 (paper §3).
            forward_mode: see the class docstring.
            init_scale: every factor is multiplied by ``init_scale^{1/N}``: the product is
                ``init_scale·W`` for "preserve"/"balanced" (``init_scale`` × the random product
                for "default").
            factor_side: ``"input"`` (paper), ``"output"`` or ``"auto"`` (class docstring).

        Raises:
            ValueError: bad ``depth``, ``init``, ``init_scale``, ``factor_side`` or ``forward_mode``.
        """
        _check_depth(depth)
        _check_start(init, init_scale, factor_side)
        w = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            depth=depth,
            bias=linear.bias is not None,
            forward_mode=forward_mode,
            device=w.device,
            dtype=w.dtype,
            factor_side=factor_side,
        )
        layer._load_start(w, init, init_scale)
        with torch.no_grad():
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return adopt(layer, linear, w.requires_grad)

    def to_dense(self) -> nn.Linear:
        """Merge: a plain ``nn.Linear`` with ``weight = F_N ⋯ F_1`` and the same bias."""
        w = self.factors[-1]
        dense = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype
        )
        return self._fill_dense(dense)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, depth={self.depth}, "
            f"bias={self.bias is not None}, forward_mode={self.forward_mode!r}, factor_side={self.factor_side!r}"
        )



class LowRankLinear(LowRankLayer):
    """Rank-r linear map as two thin layers: ``second(first(x))``.

    ``first = Linear(in, rank, bias=False)`` (weight ``diag(√S_r) Vh_r``), ``second =
    Linear(rank, out)`` (weight ``U_r diag(√S_r)``, the original bias). Params ``rank·(in+out)``
    (+ bias), MACs per input vector ``rank·(in+out)`` (paper §2.9).
    """

    dense_type = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"`rank` must be an int >= 1, got {rank!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def _empty_like(cls, dense: nn.Linear, rank: int) -> LowRankLinear:
        w = dense.weight
        return torch.nn.utils.skip_init(  # no random init: the weights are copied in next
            cls, dense.in_features, dense.out_features, rank, dense.bias is not None, device=w.device, dtype=w.dtype
        )

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``weight = second.weight @ first.weight``."""
        w = self.second.weight
        dense = nn.Linear(
            self.in_features, self.out_features, self.second.bias is not None, device=w.device, dtype=w.dtype
        )
        with torch.no_grad():
            dense.weight.copy_(linalg.merge_factors([self.first.weight, self.second.weight]))
            if self.second.bias is not None:
                dense.bias.copy_(self.second.bias)
        return adopt(dense, self, w.requires_grad)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"



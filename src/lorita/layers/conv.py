"""Convolution layer forms: :class:`FactorizedConv2d` / :class:`FactorizedConv1d` (training) and
:class:`LowRankConv2d` / :class:`LowRankConv1d` (inference).

* :class:`FactorizedConv2d` — the original ``k×k`` conv (stride, padding, dilation kept), then
  ``depth − 1`` square ``1×1`` channel-mixing factors ``(C_out, C_out)``, bias on the last
  (LoRITa, arXiv 2405.03089, §2.2).
* :class:`LowRankConv2d` — ``k×k`` conv with ``r`` filters (original stride/padding/dilation)
  then a ``1×1`` conv ``r → C_out`` with the bias (paper §2.9).
"""

from __future__ import annotations

import math
from typing import ClassVar

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


class FactorizedConv2d(_FactorChain):
    """``nn.Conv2d`` (groups=1) over-parameterized as a k×k conv then ``depth−1`` 1×1 factors.

    Parameters: ``factors[0]`` ``(C_out, C_in, k_h, k_w)`` — the spatial conv, with the original
    stride, padding, dilation and padding mode; ``factors[1..depth-1]`` ``(C_out, C_out)`` — the
    1×1 channel-mixing factors; ``bias`` ``(C_out,)`` or ``None`` (added after the last factor).
    Effective weight: ``unmatricize(F_N ⋯ F_2 · matricize(F_1))`` (paper §2.2).

    Factor side: in matrix terms (weight matricized ``(C_out, C_in·k_h·k_w)``) this paper form
    already puts the square factors on the *output* side, and ``C_out <= C_in·k_h·k_w`` for
    nearly every conv, so it is also the smaller side. An input-side square factor would be
    ``(C_in·k²)×(C_in·k²)`` — not a convolution — and 1×1 ``C_in`` factors in front of the
    k×k conv would act on another unfolding of the kernel (not the one that is truncated), so
    convs always keep this form: ``factor_side`` is accepted for a uniform signature and recorded
    as ``"output"``.

    ``forward_mode`` as for :class:`FactorizedLinear`; for convolutions ``"merged"`` is nearly
    always cheaper (the factor product is tiny next to the activations), which is what
    ``"auto"`` finds. Input ``(B, C_in, H, W)``, output ``(B, C_out, H_out, W_out)``.
    """

    dense_type: ClassVar[type] = nn.Conv2d  # the plain layer this form merges back to (Conv1d in the subclass)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        depth: int = 2,
        forward_mode: ForwardMode = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_depth(depth)
        _check_mode(forward_mode)
        kw = {"device": device, "dtype": dtype}
        # Reuse nn.Conv2d's argument normalization and padding logic through a template layer.
        template = self.dense_type(
            in_channels, out_channels, kernel_size, stride, padding, dilation, 1, False, padding_mode,
            device="meta",
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = template.kernel_size
        self.stride = template.stride
        self.padding = template.padding
        self.dilation = template.dilation
        self.padding_mode = padding_mode
        self._reversed_padding_repeated_twice = template._reversed_padding_repeated_twice
        # TorchScript-friendly copies: spatial rank, padding as a str ("same"/"valid") or ints.
        self._dims = len(self.kernel_size)
        self._padding_str = self.padding if isinstance(self.padding, str) else ""
        self._padding_ints = [0] * self._dims if isinstance(self.padding, str) else list(self.padding)
        self.depth = depth
        self.forward_mode = forward_mode
        self.factor_side = "output"  # the only conv form (class docstring)
        first = (out_channels, in_channels, *self.kernel_size)
        shapes = [first] + [(out_channels, out_channels)] * (depth - 1)
        self._build_factors(shapes, out_channels if bias else None, in_channels * math.prod(self.kernel_size), kw)

    def merged_weight(self) -> Tensor:
        """Exact merged kernel ``(C_out, C_in, k_h, k_w)`` (float64 accumulation)."""
        mat = linalg.merge_factors(list(self.factors))
        return linalg.unmatricize(mat, self.factors[0].shape)

    def _product(self) -> Tensor:
        fs: list[Tensor] = [f for f in self.factors]
        if len(fs) == 1:
            return fs[0]
        first = fs[0]
        mats = fs[1:][::-1] + [first.reshape(first.shape[0], -1)]
        return torch.linalg.multi_dot(mats).reshape(first.shape)

    def _conv_fn(self, x: Tensor, weight: Tensor, bias: Tensor | None, padding: list[int]) -> Tensor:
        if self._dims == 1:
            return F.conv1d(x, weight, bias, self.stride, padding, self.dilation)
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return self._conv_fn(x, weight, bias, [0] * self._dims)
        if self._padding_str != "":
            if self._dims == 1:
                return F.conv1d(x, weight, bias, self.stride, self._padding_str, self.dilation)
            return F.conv2d(x, weight, bias, self.stride, self._padding_str, self.dilation)
        return self._conv_fn(x, weight, bias, self._padding_ints)

    def mode_for(self, positions: int) -> str:
        """``"chain"`` or ``"merged"``, the cheaper for ``positions`` = batch·H_out·W_out (MACs)."""
        if self.forward_mode != "auto":
            return self.forward_mode
        c, d = self.out_channels, self.depth
        n = self._fan_in
        chain = positions * (n * c + (d - 1) * c * c)
        shapes = [(c, c) for _ in range(d - 1)] + [(c, n)]
        merged = (_product_macs(shapes) if d > 1 else 0) + positions * n * c
        return "merged" if merged < chain else "chain"

    def forward(self, x: Tensor) -> Tensor:
        if self.depth == 1:
            return self._conv(x, self.factors[0], self.bias)
        # Output positions, without running the conv: standard conv arithmetic.
        positions = x.shape[0] if x.dim() == self._dims + 2 else 1
        spatial = x.shape[-self._dims :]
        for i in range(self._dims):
            size = spatial[i]
            if self._padding_str == "same":
                positions *= size
                continue
            k, s, dl = self.kernel_size[i], self.stride[i], self.dilation[i]
            p = self._padding_ints[i]
            positions *= max(1, (size + 2 * p - dl * (k - 1) - 1) // s + 1)
        if self.mode_for(positions) == "merged":
            return self._conv(x, self._product(), self.bias)
        fs: list[Tensor] = [f for f in self.factors]
        y = self._conv(x, fs[0], None)
        n_mix = len(fs) - 1
        for i in range(n_mix):
            b = self.bias if i == n_mix - 1 else None
            w = fs[i + 1].unsqueeze(-1)
            if self._dims == 2:
                y = F.conv2d(y, w.unsqueeze(-1), b)
            else:
                y = F.conv1d(y, w, b)
        return y

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        depth: int,
        init: Init = "default",
        forward_mode: ForwardMode = "auto",
        init_scale: float = 1.0,
        factor_side: FactorSide = "input",
    ) -> FactorizedConv2d:
        """Build the depth-N form of ``conv`` (groups must be 1).

        Args:
            conv: the dense conv; weight ``(C_out, C_in, k_h, k_w)``.
            depth: number of factors N (>= 1).
            init: ``"default"`` (fresh default init, bias copied; the paper's), ``"preserve"``
                (``F_1 = W``, 1×1 factors ``= I``: computes exactly what ``conv`` did) or
                ``"balanced"`` (``W_mat = UΣVᵀ``: ``F_1 = U Σ^{1/N} Vᵀ`` reshaped to the kernel,
                1×1 factors ``U Σ^{1/N} Uᵀ``; same product, balanced — paper §3).
            forward_mode: see the class docstring.
            init_scale: each factor × ``init_scale^{1/N}`` (product ``init_scale·W``).
            factor_side: accepted and validated; convs always use the paper form (class docstring).

        Raises:
            ValueError: ``groups != 1``, bad ``depth``/``init``/``init_scale``/``factor_side``/``forward_mode``.
        """
        _check_depth(depth)
        _check_start(init, init_scale, factor_side)
        if conv.groups != 1:
            raise ValueError(
                f"{type(conv).__name__} with groups={conv.groups} is not supported (only groups=1); "
                f"exclude the layer"
            )
        w = conv.weight
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            depth=depth,
            forward_mode=forward_mode,
            device=w.device,
            dtype=w.dtype,
        )
        layer._load_start(linalg.matricize(w), init, init_scale)
        with torch.no_grad():
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return adopt(layer, conv, w.requires_grad)

    def to_dense(self) -> nn.Conv2d:
        """Merge: a plain ``nn.Conv2d`` with the merged kernel and the same hyper-parameters."""
        w = self.factors[0]
        dense = self.dense_type(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            1,
            self.bias is not None,
            self.padding_mode,
            device=w.device,
            dtype=w.dtype,
        )
        return self._fill_dense(dense)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
            f"depth={self.depth}, forward_mode={self.forward_mode!r}"
        )



class LowRankConv2d(LowRankLayer):
    """Rank-r convolution as a k×k conv with ``rank`` filters then a 1×1 conv to ``C_out``.

    ``first = Conv2d(C_in, rank, k, stride, padding, dilation, bias=False)`` (weight
    ``diag(√S_r) Vh_r`` reshaped to ``(rank, C_in, k_h, k_w)``), ``second = Conv2d(rank, C_out, 1)``
    (weight ``U_r diag(√S_r)``, the original bias). MACs per output position
    ``rank·(C_in·k_h·k_w + C_out)`` vs ``C_out·C_in·k_h·k_w`` dense (paper §2.9).
    """

    dense_type: ClassVar[type] = nn.Conv2d  # the plain layer type of both halves (Conv1d in the subclass)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        rank: int,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"`rank` must be an int >= 1, got {rank!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.rank = rank
        self.first = self.dense_type(
            in_channels, rank, kernel_size, stride, padding, dilation, 1, False, padding_mode,
            device=device, dtype=dtype,
        )
        self.second = self.dense_type(rank, out_channels, 1, bias=bias, device=device, dtype=dtype)

    @classmethod
    def _empty_like(cls, dense: nn.Conv2d, rank: int) -> LowRankConv2d:
        w = dense.weight
        return torch.nn.utils.skip_init(  # no random init: the weights are copied in next
            cls, dense.in_channels, dense.out_channels, dense.kernel_size, rank, dense.stride, dense.padding,
            dense.dilation, dense.bias is not None, dense.padding_mode, device=w.device, dtype=w.dtype,
        )

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, rank: int, name: str = "conv") -> LowRankConv2d:
        """Best rank-``rank`` split of ``conv`` (groups=1; weight matricized ``(C_out, C_in·k·k)``).

        Raises:
            ValueError: ``groups != 1``, rank outside ``[1, min(C_out, C_in·k·k)]``, non-finite weight.
        """
        if conv.groups != 1:
            raise ValueError(
                f"`{name}`: {type(conv).__name__} with groups={conv.groups} cannot be split; exclude it"
            )
        return super().from_dense(conv, rank, name)

    def to_dense(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` whose kernel is the product of the two thin convs."""
        f, s = self.first, self.second
        dense = self.dense_type(
            self.in_channels, self.out_channels, f.kernel_size, f.stride, f.padding, f.dilation, 1,
            s.bias is not None, f.padding_mode, device=s.weight.device, dtype=s.weight.dtype,
        )
        with torch.no_grad():
            mat = linalg.merge_factors([f.weight, s.weight])
            dense.weight.copy_(linalg.unmatricize(mat, dense.weight.shape))
            if s.bias is not None:
                dense.bias.copy_(s.bias)
        return adopt(dense, self, s.weight.requires_grad)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, rank={self.rank}"


class FactorizedConv1d(FactorizedConv2d):
    """``nn.Conv1d`` (groups=1) as a size-k conv then ``depth−1`` 1-wide channel-mixing factors.

    Same math as :class:`FactorizedConv2d` with one spatial dim: ``factors[0]`` ``(C_out, C_in, k)``,
    ``factors[1..]`` ``(C_out, C_out)``; weight matricized as ``(C_out, C_in·k)``. Input
    ``(B, C_in, L)``, output ``(B, C_out, L_out)``.
    """

    dense_type: ClassVar[type] = nn.Conv1d


class LowRankConv1d(LowRankConv2d):
    """Rank-r ``nn.Conv1d``: a size-k conv with ``rank`` filters, then a 1-wide conv to ``C_out``.

    Params ``rank·(C_in·k + C_out)`` (+ bias); MACs per output position the same.
    """

    dense_type: ClassVar[type] = nn.Conv1d

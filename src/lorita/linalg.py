"""Pure tensor math behind LoRITa (no ``nn.Module`` here).

LoRITa (Zhang, Alkhouri, Wang, "Structure-Preserving Network Compression Via Low-Rank Induced
Training Through Linear Layers Composition", arXiv 2405.03089, TMLR 2024) writes a weight
``W`` as a product of ``depth`` linear factors ``W = F_N ⋯ F_1`` (``F_1`` touches the input
first), trains the factors with plain weight decay, multiplies them back (*merge*) and keeps the
leading singular triplets of ``W`` (*truncate*). Weight decay on the factors equals, at the
optimum, the Schatten-2/N quasi-norm penalty ``N·Σ_j σ_j(W)^{2/N}`` on ``W`` (paper §3).

Conventions: a conv weight ``(C_out, C_in, k_h, k_w)`` is *matricized* as
``(C_out, C_in·k_h·k_w)`` (paper §2.8 / official ``W.view(C_out, -1)``). ``svd`` returns
``U, S, Vh`` with ``S`` descending, as :func:`torch.linalg.svd` with ``full_matrices=False``.
All SVDs run in float32 or float64 and results are cast back to the input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "svd_of_product",
    "matricize",
    "unmatricize",
    "merge_factors",
    "svd",
    "truncate_weight",
    "split_low_rank",
    "truncation_error",
    "energy",
    "rank_for_energy",
    "rank_for_rel_sigma",
    "rank_for_ratio",
    "worth_splitting",
    "low_rank_params",
    "schatten_quasi_norm",
    "ensure_finite",
    "balanced_factors",
    "resolve_factor_side",
    "FACTOR_SIDES",
]

FACTOR_SIDES = ("input", "output", "auto")

_COMPUTE_DTYPES = (torch.float32, torch.float64)


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 stays float64."""
    return t.dtype if t.dtype in _COMPUTE_DTYPES else torch.float32


def matricize(weight: Tensor) -> Tensor:
    """View a weight as a matrix.

    Args:
        weight: ``(out, in)`` for Linear or ``(C_out, C_in, k_h, k_w)`` (any number of trailing
            kernel dims) for convolutions.

    Returns:
        ``(out, in)`` or ``(C_out, C_in·k_h·k_w)``; a view when possible.

    Raises:
        ValueError: for a weight with fewer than 2 dims.
    """
    if weight.dim() < 2:
        raise ValueError(f"expected a weight with >= 2 dims, got shape {tuple(weight.shape)}")
    return weight.reshape(weight.shape[0], -1)


def unmatricize(matrix: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of :func:`matricize`: reshape ``(out, prod(shape[1:]))`` back to ``shape``."""
    shape = tuple(int(s) for s in shape)
    if matrix.shape[0] != shape[0] or matrix.shape[1] != math.prod(shape[1:]):
        raise ValueError(f"cannot reshape matrix {tuple(matrix.shape)} to weight shape {shape}")
    return matrix.reshape(shape)


def merge_factors(factors: Sequence[Tensor]) -> Tensor:
    """Multiply a chain of factors back into one matrix: ``W = F_N ⋯ F_2 · F_1``.

    ``factors[0]`` is ``F_1`` (applied to the input first). Each factor is a matrix; ``F_1`` may
    be a conv weight ``(C_out, C_in, k_h, k_w)``, which is matricized first. The product is
    accumulated in float64 and cast back to ``factors[-1].dtype`` so the merge is exact up to one
    final rounding (paper §2.7). Autograd flows through it.

    Args:
        factors: ``[F_1 (m_1, n), F_2 (m_2, m_1), ..., F_N (m_N, m_{N-1})]``.

    Returns:
        ``(m_N, n)`` matrix (matricized if ``F_1`` was a conv weight).

    Raises:
        ValueError: on an empty list or mismatched inner dimensions.
    """
    if len(factors) == 0:
        raise ValueError("merge_factors needs at least one factor")
    out_dtype = factors[-1].dtype
    acc = matricize(factors[0])
    if len(factors) == 1:
        return acc
    acc = acc.to(torch.float64)
    for i, f in enumerate(factors[1:], start=2):
        f = matricize(f)
        if f.shape[1] != acc.shape[0]:
            raise ValueError(f"factor F_{i} has shape {tuple(f.shape)} but F_{i - 1}⋯F_1 has {acc.shape[0]} rows")
        acc = f.to(torch.float64) @ acc
    return acc.to(out_dtype)


def svd(weight: Tensor, name: str = "weight") -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of a (matricized) weight in float32/float64.

    Args:
        weight: ``(m, n)`` matrix or a conv weight (matricized to ``(C_out, C_in·k_h·k_w)``).

    Returns:
        ``U (m, q)``, ``S (q,)`` descending, ``Vh (q, n)`` with ``q = min(m, n)``, in the compute
        dtype (float32, or float64 for float64 input), so that ``U @ diag(S) @ Vh ≈ W``.

    Raises:
        ValueError: if the weight holds NaN or Inf (the message names ``name``).
    """
    mat = matricize(weight).detach()
    ensure_finite(mat, name)
    mat = mat.to(_compute_dtype(mat))
    return torch.linalg.svd(mat, full_matrices=False)


def _check_rank(rank: int, shape: Sequence[int], name: str) -> None:
    m, n = int(shape[0]), math.prod(int(s) for s in shape[1:])
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"`{name}`: rank must be an int, got {rank!r} ({type(rank).__name__})")
    if not 1 <= rank <= min(m, n):
        raise ValueError(
            f"`{name}`: rank {rank} is outside [1, min(out, in·k·k)={min(m, n)}] for weight "
            f"{tuple(int(s) for s in shape)}; pick a rank in that range or use a rank policy"
        )


def truncate_weight(weight: Tensor, rank: int, name: str = "weight") -> Tensor:
    """Best rank-``rank`` approximation of a weight (Eckart–Young), same shape and dtype.

    Args:
        weight: ``(out, in)`` or ``(C_out, C_in, k_h, k_w)``.
        rank: kept singular triplets, ``1 <= rank <= min(out, in·k_h·k_w)``.
        name: layer name used in error messages.

    Returns:
        ``U_r diag(S_r) Vh_r`` reshaped to ``weight.shape`` and cast to ``weight.dtype``.
        Its squared Frobenius error is ``Σ_{i>rank} S_i²`` (:func:`truncation_error`).

    Raises:
        ValueError / TypeError: rank out of range or not an int; non-finite weight.
    """
    _check_rank(rank, weight.shape, name)
    U, S, Vh = svd(weight, name)
    mat = (U[:, :rank] * S[:rank]) @ Vh[:rank]
    return unmatricize(mat, weight.shape).to(weight.dtype)


def split_low_rank(weight: Tensor, rank: int, name: str = "weight") -> tuple[Tensor, Tensor]:
    """Split a weight into two thin factors with balanced scales.

    ``W ≈ B @ A`` with ``A = diag(√S_r) Vh_r`` of shape ``(rank, n)`` (the first, input-side
    layer) and ``B = U_r diag(√S_r)`` of shape ``(m, rank)`` (the second layer). For a conv weight
    ``A`` is reshaped to ``(rank, C_in, k_h, k_w)`` (a k×k conv with ``rank`` filters) and ``B`` to
    ``(C_out, rank, 1, 1)`` (a 1×1 conv) — the deployable form of paper §2.9.

    Returns:
        ``(A, B)`` in ``weight.dtype``.

    Raises:
        ValueError / TypeError: rank out of range; non-finite weight.
    """
    _check_rank(rank, weight.shape, name)
    U, S, Vh = svd(weight, name)
    root = S[:rank].sqrt()
    a = root[:, None] * Vh[:rank]
    b = U[:, :rank] * root[None, :]
    if weight.dim() > 2:
        a = a.reshape((rank, *weight.shape[1:]))
        b = b.reshape((weight.shape[0], rank) + (1,) * (weight.dim() - 2))
    return a.to(weight.dtype), b.to(weight.dtype)


def truncation_error(S: Tensor, rank: int) -> float:
    """Squared Frobenius error of the best rank-``rank`` approximation: ``Σ_{i>rank} S_i²``."""
    return float((S[rank:].double() ** 2).sum())


def energy(S: Tensor) -> Tensor:
    """Cumulative energy ``e_r = Σ_{i<=r} S_i² / Σ_i S_i²`` for r = 1..len(S) (float64, in [0, 1]).

    A zero matrix has energy 1 at every rank.
    """
    sq = S.detach().double() ** 2
    total = sq.sum()
    if total <= 0:
        return torch.ones_like(sq)
    return sq.cumsum(0) / total


def rank_for_energy(S: Tensor, energy_kept: float) -> int:
    """Smallest rank ``r >= 1`` whose cumulative energy is at least ``energy_kept``.

    Args:
        S: singular values, descending, shape ``(q,)``.
        energy_kept: share of ``Σ S²`` to keep, in ``(0, 1]``.

    Raises:
        ValueError: ``energy_kept`` outside ``(0, 1]``.
    """
    if not 0.0 < energy_kept <= 1.0:
        raise ValueError(f"`energy` must be in (0, 1], got {energy_kept}")
    e = energy(S)
    # Guard against float round-off making e[-1] slightly below 1.
    need = min(float(energy_kept), float(e[-1]))
    idx = int(torch.searchsorted(e, torch.tensor([need], dtype=e.dtype) - 1e-12).item())
    return max(1, min(idx + 1, len(S)))


def rank_for_rel_sigma(S: Tensor, rel_sigma: float) -> int:
    """Number of singular values with ``S_i / S_1 >= rel_sigma`` (at least 1).

    This is the paper's "global" criterion (official code, ``layer_decompose_cnn``): one
    threshold on per-layer max-normalized singular values, shared by all layers.
    """
    if not 0.0 <= rel_sigma <= 1.0:
        raise ValueError(f"`rel_sigma` must be in [0, 1], got {rel_sigma}")
    if S.numel() == 0 or float(S[0]) <= 0:
        return 1
    return max(1, int((S / S[0] >= rel_sigma).sum()))


def rank_for_ratio(q: int, ratio: float) -> int:
    """Uniform ("local") rank: ``max(1, floor(q · ratio))`` for ``q = min(out, in·k·k)``."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"`ratio` must be in (0, 1], got {ratio}")
    return max(1, min(q, math.floor(q * ratio + 1e-9)))


def low_rank_params(m: int, n: int, rank: int) -> int:
    """Weight params of the two-layer split of an ``(m, n)`` matrix: ``rank·(m + n)``."""
    return rank * (m + n)


def worth_splitting(m: int, n: int, rank: int) -> bool:
    """True iff the split saves weights (and MACs): ``rank·(m + n) < m·n`` (paper §2.9)."""
    return low_rank_params(m, n, rank) < m * n


def schatten_quasi_norm(S: Tensor, depth: int) -> float:
    """``Σ_j S_j^{2/depth}``: the penalty weight decay induces on a depth-N product (paper §3)."""
    if depth < 1:
        raise ValueError(f"`depth` must be >= 1, got {depth}")
    return float((S.double().clamp_min(0) ** (2.0 / depth)).sum())


def ensure_finite(t: Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``t`` holds NaN or Inf."""
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"`{name}` holds {bad} non-finite value(s) (NaN/Inf); the layer cannot be merged or "
            f"decomposed. Check the training run (learning rate, loss scaling) or exclude the layer."
        )


def svd_of_product(b: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of ``W = B @ A`` without forming ``W``: exact and cheap for thin factors.

    With ``B = Q_b R_b`` and ``Aᵀ = Q_a R_a`` (reduced QR), ``W = Q_b (R_b R_aᵀ) Q_aᵀ``; the SVD of
    the small ``r×r`` core ``u s vhᵀ`` gives ``U = Q_b u``, ``S = s``, ``Vh = vh Q_aᵀ``. Cost
    ``O((m + n)·r²)`` instead of ``O(m·n·min(m, n))``. Used to re-truncate a fine-tuned low-rank
    layer (whose rank is at most ``r``).

    Args:
        b: ``(m, r)`` — the second (output-side) factor. a: ``(r, n)`` — the first factor.

    Returns:
        ``U (m, r)``, ``S (r,)`` descending, ``Vh (r, n)`` in float32/float64.

    Raises:
        ValueError: inner dimensions differ or a factor is not finite.
    """
    if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0]:
        raise ValueError(f"svd_of_product needs B (m, r) and A (r, n); got {tuple(b.shape)} and {tuple(a.shape)}")
    ensure_finite(b, "B")
    ensure_finite(a, "A")
    dt = _compute_dtype(b)
    qb, rb = torch.linalg.qr(b.detach().to(dt))
    qa, ra = torch.linalg.qr(a.detach().to(dt).T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    return qb @ u, s, vh @ qa.T


def resolve_factor_side(side: str, m: int, n: int) -> str:
    """Where the ``N−1`` square factors of an ``(m, n)`` weight go: ``"input"`` (``n×n``, the
    paper's Linear form), ``"output"`` (``m×m``), or for ``"auto"`` the smaller of the two
    (``"output"`` when ``m < n``, else ``"input"``; ties keep the paper's form).

    Raises:
        ValueError: ``side`` not in :data:`FACTOR_SIDES`.
    """
    if side not in FACTOR_SIDES:
        raise ValueError(f"`factor_side` must be one of {FACTOR_SIDES}, got {side!r}")
    if side == "auto":
        return "output" if m < n else "input"
    return side


def balanced_factors(weight: Tensor, depth: int, side: str = "input", scale: float = 1.0) -> list[Tensor]:
    """Split ``scale·W`` into ``depth`` *balanced* factors ``[F_1, …, F_N]`` (input side first).

    With the full SVD ``W = U Σ Vᵀ`` (``q = min(m, n)`` singular values, padded with zeros to the
    square size ``d``) and ``s = (scale·σ)^{1/N}``:

    * ``side="input"`` (``d = n``): ``F_1 = ⋯ = F_{N−1} = V diag(s) Vᵀ`` (``n×n``),
      ``F_N = U_q diag(s_q) V_qᵀ`` (``m×n``);
    * ``side="output"`` (``d = m``): ``F_1 = U_q diag(s_q) V_qᵀ`` (``m×n``),
      ``F_2 = ⋯ = F_N = U diag(s) Uᵀ`` (``m×m``).

    Then ``F_N ⋯ F_1 = scale·W`` (up to float rounding) and ``F_{j+1}ᵀF_{j+1} = F_j F_jᵀ`` for every
    ``j`` — the balancedness under which ``Σ_j ||F_j||_F² = N·Σ σ_j(scale·W)^{2/N}``, i.e. plain
    weight decay equals the Schatten-2/N penalty from step 0 (LoRITa, arXiv 2405.03089, §3; Arora
    et al. 2018 for balanced deep linear factorizations). Computed in float64, returned in
    ``weight``'s dtype.

    Args:
        weight: ``(m, n)`` matrix (matricize conv kernels first). depth: N >= 1.
        side: ``"input"`` | ``"output"`` | ``"auto"`` (:func:`resolve_factor_side`).
        scale: > 0; the product is ``scale·W``.

    Raises:
        ValueError: bad ``depth``/``side``/``scale``, a non-2-D or non-finite weight.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"`depth` must be an int >= 1, got {depth!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"`init_scale` must be a finite number > 0, got {scale!r}")
    if weight.dim() != 2:
        raise ValueError(f"balanced_factors needs an (m, n) matrix, got shape {tuple(weight.shape)}")
    ensure_finite(weight, "weight")
    m, n = int(weight.shape[0]), int(weight.shape[1])
    side = resolve_factor_side(side, m, n)
    w = weight.detach().to(torch.float64)
    if depth == 1:
        return [(scale * w).to(weight.dtype)]
    u, sv, vh = torch.linalg.svd(w, full_matrices=True)
    q = sv.shape[0]
    s = (scale * sv).pow(1.0 / depth)
    main = (u[:, :q] * s) @ vh[:q]
    basis = vh.T if side == "input" else u  # (d, d) orthogonal
    pad = torch.zeros(basis.shape[0], dtype=torch.float64, device=w.device)
    pad[:q] = s
    square = (basis * pad) @ basis.T
    mats = [square] * (depth - 1) + [main] if side == "input" else [main] + [square] * (depth - 1)
    return [f.to(weight.dtype) for f in mats]

"""Pure math: merge, SVD truncation (Eckart–Young), splits, energy/σ-threshold ranks."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lorita import linalg


def _with_spectrum(m, n, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    k = len(S)
    return U[:, :k] @ torch.diag(torch.tensor(S, dtype=torch.float64)) @ V[:, :k].T


def test_merge_factors_matches_explicit_product():
    f1, f2, f3 = torch.randn(7, 7), torch.randn(7, 7), torch.randn(4, 7)
    want = (f3.double() @ f2.double() @ f1.double()).float()
    got = linalg.merge_factors([f1, f2, f3])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_merge_factors_conv_first_factor_is_matricized():
    k = torch.randn(5, 3, 3, 3)
    c = torch.randn(5, 5)
    got = linalg.merge_factors([k, c])
    torch.testing.assert_close(got, (c.double() @ k.reshape(5, -1).double()).float())
    assert got.shape == (5, 27)


def test_merge_factors_rejects_bad_chain():
    with pytest.raises(ValueError, match="F_2 has shape"):
        linalg.merge_factors([torch.randn(4, 3), torch.randn(5, 5)])
    with pytest.raises(ValueError, match="at least one"):
        linalg.merge_factors([])


@pytest.mark.parametrize("shape", [(9, 6), (6, 9), (5, 3, 3, 3)])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_truncation_error_is_eckart_young(shape, rank):
    w = torch.randn(shape, dtype=torch.float64)
    _, S, _ = linalg.svd(w)
    t = linalg.truncate_weight(w, rank)
    assert t.shape == w.shape
    assert torch.linalg.matrix_rank(linalg.matricize(t)).item() == rank
    err = float(((w - t) ** 2).sum())
    assert err == pytest.approx(float((S[rank:] ** 2).sum()), rel=1e-10, abs=1e-12)
    assert linalg.truncation_error(S, rank) == pytest.approx(err, rel=1e-10, abs=1e-12)


def test_split_low_rank_reconstructs_truncation_and_balances_scales():
    w = torch.randn(10, 4, 3, 3, dtype=torch.float64)
    a, b = linalg.split_low_rank(w, 3)
    assert a.shape == (3, 4, 3, 3) and b.shape == (10, 3, 1, 1)
    prod = b.reshape(10, 3) @ a.reshape(3, -1)
    torch.testing.assert_close(prod.reshape(w.shape), linalg.truncate_weight(w, 3), atol=1e-12, rtol=0)
    # Balanced: row norms of A equal column norms of B (both sqrt(S)).
    torch.testing.assert_close(a.reshape(3, -1).norm(dim=1), b.reshape(10, 3).norm(dim=0), atol=1e-12, rtol=0)


@pytest.mark.parametrize("rank", [0, 7, -1])
def test_rank_out_of_range_names_layer_and_range(rank):
    with pytest.raises(ValueError, match=r"`fc1`: rank .* outside \[1, min\(out, in·k·k\)=6\]"):
        linalg.truncate_weight(torch.randn(6, 8), rank, name="fc1")


def test_rank_must_be_int():
    with pytest.raises(TypeError, match="must be an int"):
        linalg.truncate_weight(torch.randn(6, 8), 2.0)


def test_half_precision_svd_runs_in_float32_and_casts_back():
    w = torch.randn(8, 8).to(torch.bfloat16)
    t = linalg.truncate_weight(w, 8)
    assert t.dtype == torch.bfloat16
    torch.testing.assert_close(t.float(), w.float(), atol=0.05, rtol=0.02)


def test_nan_weight_is_reported():
    w = torch.randn(4, 4)
    w[1, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        linalg.svd(w)


def test_energy_curve_and_rank_for_energy_on_hand_spectrum():
    S = torch.tensor([3.0, 2.0, 1.0, 0.0])  # squares 9, 4, 1, 0 -> total 14
    e = linalg.energy(S)
    torch.testing.assert_close(e, torch.tensor([9 / 14, 13 / 14, 1.0, 1.0], dtype=torch.float64))
    assert linalg.rank_for_energy(S, 9 / 14) == 1
    assert linalg.rank_for_energy(S, 0.65) == 2
    assert linalg.rank_for_energy(S, 13 / 14) == 2
    assert linalg.rank_for_energy(S, 0.99) == 3
    assert linalg.rank_for_energy(S, 1.0) == 3
    with pytest.raises(ValueError, match=r"`energy` must be in \(0, 1\]"):
        linalg.rank_for_energy(S, 1.5)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=1, max_size=30),
    st.floats(0.01, 1.0),
)
def test_rank_for_energy_is_minimal(values, target):
    S = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
    r = linalg.rank_for_energy(S, target)
    e = linalg.energy(S)
    assert 1 <= r <= len(S)
    assert e[r - 1] >= target - 1e-9 or r == len(S)
    if r > 1:
        assert e[r - 2] < target - 1e-12 or math.isclose(float(e[r - 2]), target, rel_tol=1e-9)


def test_rank_for_rel_sigma_and_ratio():
    S = torch.tensor([10.0, 5.0, 1.0, 0.5, 0.01])
    assert linalg.rank_for_rel_sigma(S, 0.05) == 4  # 10, 5, 1, 0.5 >= 0.5
    assert linalg.rank_for_rel_sigma(S, 0.5) == 2
    assert linalg.rank_for_rel_sigma(S, 0.0) == 5
    assert linalg.rank_for_rel_sigma(S, 1.0) == 1
    assert linalg.rank_for_ratio(64, 0.1) == 6
    assert linalg.rank_for_ratio(10, 0.01) == 1
    assert linalg.rank_for_ratio(10, 1.0) == 10


def test_worth_splitting_boundary():
    # 100x100 at rank 50: 50*200 = 10,000 = m*n -> not worth it; rank 49 is.
    assert not linalg.worth_splitting(100, 100, 50)
    assert linalg.worth_splitting(100, 100, 49)


def test_schatten_quasi_norm_is_min_of_factor_penalty():
    # Paper §3: min over W = F_N⋯F_1 of (1/N) Σ ||F_i||_F² = Σ σ^{2/N}, attained by balanced factors.
    W = _with_spectrum(5, 4, [4.0, 1.0, 0.25])
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    N = 3
    root = torch.diag(S ** (1 / N))
    factors = [root @ Vh, root, U @ root]
    torch.testing.assert_close(factors[2] @ factors[1] @ factors[0], W, atol=1e-12, rtol=0)
    penalty = sum(float((f**2).sum()) for f in factors) / N
    assert penalty == pytest.approx(linalg.schatten_quasi_norm(S, N), rel=1e-10)
    assert linalg.schatten_quasi_norm(S, N) == pytest.approx(4 ** (2 / 3) + 1 + 0.25 ** (2 / 3), rel=1e-6)

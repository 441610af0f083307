"""dtype, device and requires_grad survive every surgery; SVD runs in float32/64; NaN/Inf is
reported with the layer's name (and the model is left untouched)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorita
from deploy_fixtures import assert_same_state, state_copy
from lorita import linalg


def _net(dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 3 * 3, 6))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.to(device=device, dtype=dtype)


def _check_all(model: nn.Module, dtype: torch.dtype, device: str, grad: dict[str, bool]) -> None:
    for name, p in model.named_parameters():
        assert p.dtype == dtype, name
        assert p.device.type == torch.device(device).type, name
        layer = name.split(".")[0]
        assert p.requires_grad == grad[layer], name


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_surgery_keeps_dtype_device_and_requires_grad(dtype):
    model = _net(dtype)
    model[2].requires_grad_(False)  # a frozen layer stays frozen in every form
    grad = {"0": True, "2": False}
    fact = lorita.factorize(model, depth=3, init="preserve")
    _check_all(fact, dtype, "cpu", grad)
    dense = lorita.merge(fact)
    _check_all(dense, dtype, "cpu", grad)
    ranks = {"0": 2, "2": 3}
    _check_all(lorita.truncate(dense, ranks), dtype, "cpu", grad)
    _check_all(lorita.to_low_rank(dense, ranks), dtype, "cpu", grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_svd_runs_in_float32_and_casts_back(dtype):
    w16 = (torch.randn(12, 9, generator=torch.Generator().manual_seed(3)) * 0.5).to(dtype)
    out = linalg.truncate_weight(w16, 4)
    assert out.dtype == dtype
    ref = linalg.truncate_weight(w16.float(), 4).to(dtype)  # the float32 computation, cast once
    assert torch.equal(out, ref)
    U, S, Vh = linalg.svd(w16)
    assert S.dtype == torch.float32
    model = nn.Sequential(nn.Linear(9, 12)).to(dtype)
    assert lorita.singular_values(model)["0"].dtype == torch.float32


def test_float64_stays_float64_end_to_end():
    model = _net(torch.float64)
    S = lorita.singular_values(model)
    assert all(s.dtype == torch.float64 for s in S.values())
    fact = lorita.factorize(model, depth=2, init="preserve")
    dense = lorita.merge(fact)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(dense(x), model(x), rtol=1e-12, atol=1e-12)  # float64 merge is exact


def test_bfloat16_factorized_model_merges_within_one_rounding():
    model = _net(torch.float32)
    fact = lorita.factorize(model, depth=3).to(torch.bfloat16)
    dense = lorita.merge(fact)
    ref = lorita.merge(fact.to(torch.float64))  # same factors, exact product
    for (name, p), (_, q) in zip(dense.named_parameters(), ref.named_parameters(), strict=True):
        assert p.dtype == torch.bfloat16
        # one final rounding to bfloat16 (8 bits of mantissa): relative error <= 2^-8
        torch.testing.assert_close(p.double(), q, rtol=2**-8, atol=1e-6, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_surgery_keeps_cuda_device():
    model = _net(torch.float16, "cuda")
    grad = {"0": True, "2": True}
    fact = lorita.factorize(model, depth=3, init="preserve")
    _check_all(fact, torch.float16, "cuda", grad)
    dense = lorita.merge(fact)
    _check_all(dense, torch.float16, "cuda", grad)
    low = lorita.to_low_rank(dense, {"0": 2, "2": 3})
    _check_all(low, torch.float16, "cuda", grad)
    x = torch.randn(2, 2, 3, 3, device="cuda", dtype=torch.float16)
    assert low(x).device.type == "cuda"


# ---- NaN / Inf named, model untouched -----------------------------------------------------------------


def _poisoned(value: float = float("nan")) -> nn.Module:
    model = _net()
    with torch.no_grad():
        model[2].weight[1, 3] = value
    return model


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize(
    "call",
    [
        lambda m: lorita.truncate(m, {"2": 2}, inplace=True),
        lambda m: lorita.to_low_rank(m, {"2": 2}, inplace=True),
        lambda m: lorita.select_ranks(m, lorita.EnergyThreshold(0.9)),
        lambda m: lorita.singular_values(m),
        lambda m: lorita.factorize(m, depth=2, init="preserve", inplace=True),
    ],
    ids=["truncate", "to_low_rank", "select_ranks", "singular_values", "factorize_preserve"],
)
def test_non_finite_weight_is_reported_with_the_layer_name(call, value):
    model = _poisoned(value)
    before = state_copy(model)
    with pytest.raises(ValueError, match=r"`2`.*non-finite value\(s\) \(NaN/Inf\)"):
        call(model)
    for k, v in before.items():  # untouched (NaN != NaN, so compare with equal_nan)
        assert torch.allclose(model.state_dict()[k], v, equal_nan=True), k
    assert type(model[2]) is nn.Linear


def test_merge_of_a_diverged_factor_names_the_layer_and_keeps_the_model():
    fact = lorita.factorize(_net(), depth=3)
    with torch.no_grad():
        fact[2].factors[0][0, 0] = float("inf")
    before = state_copy(fact)
    with pytest.raises(ValueError, match=r"`2`: `merged weight` holds \d+ non-finite"):
        lorita.merge(fact, inplace=True)
    assert isinstance(fact[2], lorita.FactorizedLinear)
    for k, v in before.items():
        assert torch.allclose(fact.state_dict()[k], v, equal_nan=True), k


def test_nan_bias_is_caught_at_factorize_with_default_init():
    model = _net()
    with torch.no_grad():
        model[0].bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"`0`: `bias` holds 1 non-finite"):
        lorita.factorize(model, depth=2)


def test_inplace_false_never_touches_the_input():
    model = _net()
    before = state_copy(model)
    dense = lorita.merge(lorita.factorize(model, depth=3))
    lorita.to_low_rank(dense, {"0": 1, "2": 1})
    assert_same_state(model, before)

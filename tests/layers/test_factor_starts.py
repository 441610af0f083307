"""Factor starts (init="balanced"/"preserve", init_scale) and factor sides (input/output/auto)."""

import pytest
import torch
from torch import nn

import lorita
from lorita import linalg
from lorita.io import manifest_of
from lorita.layers import FactorizedConv2d, FactorizedLinear, FactorizedMultiheadAttention


def _balanced_gaps(mats):
    """max |F_{j+1}ᵀF_{j+1} − F_j F_jᵀ| over the chain (mats matricized, input side first)."""
    return max(float((b.T @ b - a @ a.T).abs().max()) for a, b in zip(mats[:-1], mats[1:]))


@pytest.mark.parametrize("side", ["input", "output", "auto"])
@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (6, 6)])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_balanced_factors_exact_product_and_balanced(side, shape, depth):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    fs = linalg.balanced_factors(w, depth, side, scale=0.5)
    assert len(fs) == depth
    torch.testing.assert_close(linalg.merge_factors(fs), 0.5 * w, atol=1e-10, rtol=0)
    if depth > 1:
        assert _balanced_gaps(fs) < 1e-10
    # Σ||F_j||² = N Σ σ_j^{2/N}: weight decay equals the Schatten-2/N penalty (paper §3)
    s = torch.linalg.svdvals(0.5 * w)
    torch.testing.assert_close(sum(float(f.pow(2).sum()) for f in fs), depth * float(s.pow(2 / depth).sum()),
                               atol=1e-9, rtol=0)


def test_resolve_factor_side_picks_the_smaller_square():
    assert linalg.resolve_factor_side("auto", 10, 512) == "output"  # head 512 -> 10
    assert linalg.resolve_factor_side("auto", 512, 784) == "output"
    assert linalg.resolve_factor_side("auto", 64, 64) == "input"  # tie: the paper's
    assert linalg.resolve_factor_side("auto", 96, 32) == "input"
    with pytest.raises(ValueError, match="`factor_side`"):
        linalg.resolve_factor_side("left", 3, 3)


@pytest.mark.parametrize("side,shapes", [
    ("input", [(7, 7), (7, 7), (3, 7)]), ("output", [(3, 7), (3, 3), (3, 3)]), ("auto", [(3, 7), (3, 3), (3, 3)]),
])
def test_linear_sides_shapes_merge_and_forward(side, shapes):
    torch.manual_seed(0)
    dense = nn.Linear(7, 3).double()
    for init in ("preserve", "balanced"):
        fact = FactorizedLinear.from_dense(dense, 3, init=init, factor_side=side)
        assert [tuple(f.shape) for f in fact.factors] == shapes
        torch.testing.assert_close(fact.merged_weight(), dense.weight, atol=1e-10, rtol=0)
        x = torch.randn(4, 7, dtype=torch.float64)
        for mode in ("chain", "merged"):
            fact.forward_mode = mode
            torch.testing.assert_close(fact(x), dense(x), atol=1e-10, rtol=0)
        back = fact.to_dense()
        torch.testing.assert_close(back.weight, dense.weight, atol=1e-10, rtol=0)
        torch.testing.assert_close(back.bias, dense.bias, atol=0, rtol=0)


def test_balanced_linear_is_balanced_and_init_scale_scales_the_product():
    torch.manual_seed(1)
    dense = nn.Linear(6, 4).double()
    fact = FactorizedLinear.from_dense(dense, 3, init="balanced", init_scale=0.25, factor_side="input")
    assert _balanced_gaps([f.detach() for f in fact.factors]) < 1e-10
    torch.testing.assert_close(fact.merged_weight(), 0.25 * dense.weight, atol=1e-10, rtol=0)
    torch.testing.assert_close(fact.bias, dense.bias, atol=0, rtol=0)  # bias not scaled
    pres = FactorizedLinear.from_dense(dense, 2, init="preserve", init_scale=4.0)
    torch.testing.assert_close(pres.factors[0].detach(), 2.0 * torch.eye(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="`init_scale`"):
        FactorizedLinear.from_dense(dense, 2, init="balanced", init_scale=0.0)
    with pytest.raises(ValueError, match="`factor_side`"):
        FactorizedLinear.from_dense(dense, 2, factor_side="middle")


def test_balanced_conv_exact_and_balanced():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 5, 3, padding=1).double()
    fact = FactorizedConv2d.from_dense(conv, 3, init="balanced", factor_side="auto")
    assert fact.factor_side == "output" and tuple(fact.factors[1].shape) == (5, 5)
    mats = [linalg.matricize(f.detach()) for f in fact.factors]
    assert _balanced_gaps(mats) < 1e-10
    torch.testing.assert_close(fact.merged_weight(), conv.weight, atol=1e-10, rtol=0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    fact.forward_mode = "chain"
    torch.testing.assert_close(fact(x), conv(x), atol=1e-10, rtol=0)
    torch.testing.assert_close(fact.to_dense().weight, conv.weight, atol=1e-10, rtol=0)


@pytest.mark.parametrize("side", ["input", "output", "auto"])
def test_balanced_attention_exact(side):
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(8, 2).double()
    fact = FactorizedMultiheadAttention.from_dense(mha, 3, init="balanced", factor_side=side)
    square = 24 if side == "output" else 8
    assert tuple(fact.in_proj.factors[1].shape) == (square, square)
    back = fact.to_dense()
    torch.testing.assert_close(back.in_proj_weight, mha.in_proj_weight, atol=1e-10, rtol=0)
    torch.testing.assert_close(back.out_proj.weight, mha.out_proj.weight, atol=1e-10, rtol=0)
    q = torch.randn(4, 1, 8, dtype=torch.float64)
    torch.testing.assert_close(fact(q, q, q)[0], mha(q, q, q)[0], atol=1e-10, rtol=0)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("side", ["input", "output", "auto"])
def test_factorize_sides_save_load_and_merged_state_dict(tmp_path, side):
    torch.manual_seed(4)
    net = _Net()
    fact = lorita.factorize(net, depth=3, init="balanced", factor_side=side)
    expect = {"input": (12, 12), "output": (8, 8), "auto": (8, 8)}[side]
    assert tuple(fact.fc1.factors[1].shape) == expect  # depth 3: the middle factor is square on both sides
    x = torch.randn(5, 12)
    torch.testing.assert_close(fact(x), net(x), atol=1e-5, rtol=0)
    path = lorita.save(fact, tmp_path / "m.safetensors")
    back = lorita.load(_Net(), path)
    assert [tuple(f.shape) for f in back.head.factors] == [tuple(f.shape) for f in fact.head.factors]
    torch.testing.assert_close(back(x), fact(x), atol=0, rtol=0)
    plain = _Net()
    plain.load_state_dict(lorita.merge(fact).state_dict(), strict=True)
    torch.testing.assert_close(plain(x), fact(x), atol=1e-5, rtol=0)


def test_attention_side_survives_save_load(tmp_path):
    torch.manual_seed(5)
    mha = nn.MultiheadAttention(8, 2)
    fact = lorita.factorize(mha, depth=2, init="balanced", factor_side="output")
    assert manifest_of(fact)["layers"][""]["factor_side"] == "output"
    back = lorita.load(nn.MultiheadAttention(8, 2), lorita.save(fact, tmp_path / "a.safetensors"))
    assert tuple(back.in_proj.factors[1].shape) == (24, 24)
    q = torch.randn(3, 1, 8)
    torch.testing.assert_close(back(q, q, q)[0], fact(q, q, q)[0], atol=0, rtol=0)

"""Layer classes: paper factor shapes, preserve-init equality, chain == merged (values and grads)."""

import pytest
import torch
from torch import nn

from lorita import FactorizedConv2d, FactorizedLinear, LowRankConv2d, LowRankLinear


def test_factorized_linear_has_the_papers_factor_shapes():
    layer = FactorizedLinear(6, 4, depth=3)
    assert [tuple(f.shape) for f in layer.factors] == [(6, 6), (6, 6), (4, 6)]
    assert layer.bias.shape == (4,)
    assert sum(p.numel() for p in layer.parameters()) == 36 + 36 + 24 + 4


def test_factorized_conv_has_the_papers_factor_shapes():
    layer = FactorizedConv2d(3, 8, 3, padding=1, depth=3, bias=False)
    assert [tuple(f.shape) for f in layer.factors] == [(8, 3, 3, 3), (8, 8), (8, 8)]
    assert layer.bias is None


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_linear_preserve_init_is_exact(depth):
    dense = nn.Linear(7, 5)
    fact = FactorizedLinear.from_dense(dense, depth, init="preserve")
    x = torch.randn(3, 7)
    torch.testing.assert_close(fact(x), dense(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(fact.merged_weight(), dense.weight, atol=0, rtol=0)


@pytest.mark.parametrize("depth", [2, 3])
def test_conv_preserve_init_is_exact(depth):
    dense = nn.Conv2d(3, 6, 3, stride=2, padding=1, dilation=1)
    fact = FactorizedConv2d.from_dense(dense, depth, init="preserve")
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(fact(x), dense(x), atol=1e-5, rtol=0)


def test_default_init_is_pytorch_default_and_keeps_bias():
    dense = nn.Linear(50, 20)
    fact = FactorizedLinear.from_dense(dense, 3)
    torch.testing.assert_close(fact.bias, dense.bias)
    bound = 1 / 50**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 50
    for f in fact.factors:
        assert f.abs().max() <= bound + 1e-7
        assert not torch.equal(f[: min(f.shape)], dense.weight[: min(f.shape)])


@pytest.mark.parametrize("cls,shape,args", [
    (FactorizedLinear, (5, 9), (9, 4)),
    (FactorizedConv2d, (2, 3, 7, 7), (3, 5, 3)),
])
def test_chain_and_merged_forward_agree_in_values_and_gradients(cls, shape, args):
    torch.manual_seed(1)
    chain = cls(*args, depth=3, forward_mode="chain")
    merged = cls(*args, depth=3, forward_mode="merged")
    merged.load_state_dict(chain.state_dict())
    x = torch.randn(shape)
    y1, y2 = chain(x), merged(x)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    for p1, p2 in zip(chain.parameters(), merged.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-5, rtol=1e-4)


def test_auto_mode_picks_the_cheaper_form():
    lin = FactorizedLinear(512, 512, depth=3)
    assert lin.mode_for(rows=128) == "chain"       # 128 rows: chain 3·128·512² < product 2·512³
    assert lin.mode_for(rows=100_000) == "merged"  # many rows: merging first is cheaper
    conv = FactorizedConv2d(64, 64, 3, padding=1, depth=3)
    assert conv.mode_for(positions=128 * 32 * 32) == "merged"


def test_to_dense_matches_factorized_output():
    layer = FactorizedConv2d(4, 6, 3, padding=1, depth=3)
    dense = layer.to_dense()
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(dense(x), layer(x), atol=1e-5, rtol=1e-5)
    assert type(dense) is nn.Conv2d and dense.padding == (1, 1)


@pytest.mark.parametrize("padding", ["same", "valid", 0])
def test_string_padding_forward(padding):
    dense = nn.Conv2d(3, 4, 3, padding=padding)
    fact = FactorizedConv2d.from_dense(dense, 2, init="preserve", forward_mode="chain")
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(fact(x), dense(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(fact.to_dense()(x), dense(x), atol=1e-5, rtol=0)


def test_low_rank_at_full_rank_equals_dense():
    lin = nn.Linear(6, 9)
    lr = LowRankLinear.from_dense(lin, 6)
    x = torch.randn(4, 6)
    torch.testing.assert_close(lr(x), lin(x), atol=1e-5, rtol=0)
    conv = nn.Conv2d(2, 5, 3, stride=2, padding=1)
    lrc = LowRankConv2d.from_dense(conv, 5)
    xc = torch.randn(2, 2, 9, 9)
    torch.testing.assert_close(lrc(xc), conv(xc), atol=1e-5, rtol=0)
    assert lrc.first.stride == (2, 2) and lrc.second.kernel_size == (1, 1)


def test_low_rank_to_dense_round_trip():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    lr = LowRankConv2d.from_dense(conv, 3)
    back = lr.to_dense()
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(back(x), lr(x), atol=1e-5, rtol=0)


def test_bad_depth_and_mode_are_rejected():
    with pytest.raises(ValueError, match="`depth` must be an int >= 1"):
        FactorizedLinear(3, 3, depth=0)
    with pytest.raises(ValueError, match="`forward_mode`"):
        FactorizedLinear(3, 3, depth=2, forward_mode="fast")
    with pytest.raises(ValueError, match="`init`"):
        FactorizedLinear.from_dense(nn.Linear(3, 3), 2, init="spectral")

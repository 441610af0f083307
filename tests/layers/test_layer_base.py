"""The layer base classes (PEFT's BaseTunerLayer habit) and the one ``is_inside`` rule."""

import pytest
import torch
from torch import nn

import lorita
from lorita.layers import FactorizedLayer, LowRankConv1d, LowRankConv2d, LowRankLayer, LowRankLinear
from lorita.targeting import is_inside


def test_every_form_is_an_instance_of_its_base():
    lin, conv = nn.Linear(6, 5), nn.Conv2d(3, 4, 3)
    for m in (lorita.FactorizedLinear.from_dense(lin, 3), lorita.FactorizedConv2d.from_dense(conv, 2),
              lorita.FactorizedMultiheadAttention.from_dense(nn.MultiheadAttention(8, 2), 2)):
        assert isinstance(m, FactorizedLayer) and not isinstance(m, LowRankLayer)
        assert isinstance(m.to_dense(), m.dense_type)
        assert all(p.dim() >= 2 for p in m.factor_parameters())
    for m in (LowRankLinear.from_dense(lin, 2), LowRankConv2d.from_dense(conv, 2),
              LowRankConv1d.from_dense(nn.Conv1d(3, 4, 3), 2)):
        assert isinstance(m, LowRankLayer) and not isinstance(m, FactorizedLayer)
        assert type(m.to_dense()) is m.dense_type


@pytest.mark.parametrize("bias", [True, False])
def test_from_factors_is_exactly_b_at_a(bias):
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=bias)
    a, b = torch.randn(2, 27, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    layer = LowRankConv2d.from_factors(conv.double(), a, b, "c")
    bb, aa = layer.thin_factors()
    torch.testing.assert_close(bb @ aa, b @ a, rtol=0, atol=0)  # a copy, no arithmetic
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    ref = nn.functional.conv2d(x, (b @ a).reshape(5, 3, 3, 3), conv.bias, padding=1)
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)


def test_from_factors_refuses_shapes_that_do_not_multiply_to_the_weight():
    with pytest.raises(ValueError, match=r"`fc`: factors \(5, 2\) @ \(2, 7\) do not give the \(5, 6\) weight"):
        LowRankLinear.from_factors(nn.Linear(6, 5), torch.randn(2, 7), torch.randn(5, 2), "fc")


def test_from_dense_is_eckart_young_optimal():
    lin = nn.Linear(9, 7).double()
    S = torch.linalg.svdvals(lin.weight.detach())
    low = LowRankLinear.from_dense(lin, 3)
    err = torch.linalg.matrix_norm(low.to_dense().weight - lin.weight).item()
    assert err == pytest.approx(S[3:].pow(2).sum().sqrt().item(), rel=1e-10)


@pytest.mark.parametrize(
    ("fqn", "outer", "inside"),
    [("a.b", ["a"], True), ("a", ["a"], False), ("ab", ["a"], False), ("a.b.c", ["x", "a.b"], True),
     ("a", [""], True), ("", [""], False), ("a", [], False)],
)
def test_is_inside(fqn, outer, inside):
    assert is_inside(fqn, outer) is inside

"""Chain vs merged forward of factorized layers: same outputs, exact gradients, MAC-based choice."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lorita.layers import FactorizedConv2d, FactorizedLinear


def _grads(layer: nn.Module, x: torch.Tensor, mode: str) -> tuple[torch.Tensor, list, torch.Tensor]:
    layer = copy.deepcopy(layer)
    layer.forward_mode = mode
    x = x.clone().requires_grad_(True)
    y = layer(x)
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)  # a fixed upstream gradient
    (y * g).sum().backward()
    return y.detach(), [p.grad for p in layer.parameters()], x.grad


def _check_same(layer: nn.Module, x: torch.Tensor, rtol: float, atol: float) -> None:
    yc, gc, xc = _grads(layer, x, "chain")
    ym, gm, xm = _grads(layer, x, "merged")
    torch.testing.assert_close(ym, yc, rtol=rtol, atol=atol)
    torch.testing.assert_close(xm, xc, rtol=rtol, atol=atol)
    assert len(gc) == len(gm) == len(list(layer.parameters()))
    for a, b in zip(gm, gc, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_chain_and_merged_gradients_match_float64(depth, shape, bias):
    torch.manual_seed(depth)
    layer = FactorizedLinear(7, 4, depth=depth, bias=bias, dtype=torch.float64)
    _check_same(layer, torch.randn(*shape, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize(
    "kw",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
        {"kernel_size": (3, 1), "dilation": 2, "padding": (2, 0)},
        {"kernel_size": 1, "stride": 2, "bias": False},  # a projection shortcut
        {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
    ],
)
def test_conv_chain_and_merged_gradients_match_float64(depth, kw):
    torch.manual_seed(depth)
    layer = FactorizedConv2d(3, 5, depth=depth, dtype=torch.float64, **kw)
    _check_same(layer, torch.randn(2, 3, 9, 8, dtype=torch.float64), rtol=1e-11, atol=1e-11)


def test_float32_gradients_match_to_rounding():
    torch.manual_seed(0)
    layer = FactorizedConv2d(16, 32, 3, padding=1, depth=3)
    _check_same(layer, torch.randn(4, 16, 8, 8), rtol=1e-4, atol=1e-5)


def test_merged_gradient_equals_gradient_of_the_product():
    # d/dF_i of <G, W x> with W = F_3 F_2 F_1: autograd through the product gives the closed form
    # dF_1 = (F_3 F_2)ᵀ G_W, dF_2 = F_3ᵀ G_W F_1ᵀ, dF_3 = G_W (F_2 F_1)ᵀ with G_W = Σ_rows g xᵀ.
    torch.manual_seed(1)
    layer = FactorizedLinear(6, 4, depth=3, bias=False, dtype=torch.float64, forward_mode="merged")
    x = torch.randn(10, 6, dtype=torch.float64)
    g = torch.randn(10, 4, dtype=torch.float64)
    (layer(x) * g).sum().backward()
    f1, f2, f3 = (f.detach() for f in layer.factors)
    gw = g.T @ x
    torch.testing.assert_close(layer.factors[0].grad, (f3 @ f2).T @ gw, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.factors[1].grad, f3.T @ gw @ f1.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.factors[2].grad, gw @ (f2 @ f1).T, rtol=1e-12, atol=1e-12)


def test_auto_mode_picks_cheaper_by_macs():
    # Linear 512→512, depth 3: chain costs rows·(2·512² + 512²) MACs, merged 2·512³ + rows·512².
    lin = FactorizedLinear(512, 512, depth=3)
    assert lin.mode_for(128) == "chain"  # 128·786,432 = 100.7 M  <  268.4 M + 33.6 M
    assert lin.mode_for(1024) == "merged"  # 805.3 M  >  268.4 M + 268.4 M
    # Breakeven for square layers is rows = n: 3·rows·n² vs 2n³ + rows·n² → rows = n.
    assert lin.mode_for(511) == "chain" and lin.mode_for(513) == "merged"
    # Conv 64→64 3×3 on 32×32 maps: the 1×1 factors cost positions·64² each, the product
    # 2·64·64·576 once: merged from a single image on.
    conv = FactorizedConv2d(64, 64, 3, padding=1, depth=3)
    assert conv.mode_for(32 * 32) == "merged"
    # The deepest VGG stage (2×2 maps of 512 channels, batch 128 → 512 positions): chain is cheaper.
    deep = FactorizedConv2d(512, 512, 3, padding=1, depth=3)
    assert deep.mode_for(128 * 2 * 2) == "chain"
    fixed = FactorizedLinear(8, 8, depth=3, forward_mode="merged")
    assert fixed.mode_for(1) == "merged"


def test_auto_mode_counts_conv_output_positions(monkeypatch):
    conv = FactorizedConv2d(4, 6, 3, stride=2, padding=1, depth=2)
    seen = []
    orig = conv.mode_for
    monkeypatch.setattr(conv, "mode_for", lambda p: seen.append(p) or orig(p))
    conv(torch.randn(3, 4, 9, 7))
    assert seen == [3 * 5 * 4]  # batch · H_out · W_out with H_out = (9+2-3)//2+1 = 5, W_out = 4

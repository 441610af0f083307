"""CIFAR reference models: exact param/MAC counts, exact merge, strict load, default targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorita
from lorita import count_macs, count_params, factorize, merge
from lorita.layers import FactorizedConv2d, FactorizedLinear
from lorita.models import MODELS, build_model, default_targets
from lorita.models.resnet import BasicBlock, ResNet18, ResNet20
from lorita.models.vgg import VGG
from lorita.models.vit import ViT
from lorita.surgery import weight_layers

X1 = torch.zeros(1, 3, 32, 32)


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.LayerNorm):
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


# -- exact sizes ------------------------------------------------------------------------------
def test_resnet20_param_count_by_hand():
    # conv1 3·16·9 + BN 32; stage 1: 3 blocks × (2 convs 16·16·9 + 2 BN·32); stage 2: first block
    # 16·32·9 + 32·32·9 + 128, two more blocks 2·32·32·9 + 128; stage 3 likewise with 64; fc 64·10 + 10.
    stage1 = 3 * (2 * 16 * 16 * 9 + 64)
    stage2 = (16 * 32 * 9 + 32 * 32 * 9 + 128) + 2 * (2 * 32 * 32 * 9 + 128)
    stage3 = (32 * 64 * 9 + 64 * 64 * 9 + 256) + 2 * (2 * 64 * 64 * 9 + 256)
    total = 3 * 16 * 9 + 32 + stage1 + stage2 + stage3 + 650
    assert total == 269_722  # the number paper-notes §8 computes for the official ResNet_small
    assert count_params(build_model("resnet20")).total_params == total


@pytest.mark.parametrize(
    "name, params, macs",
    [
        ("resnet20", 269_722, 40_551_040),  # paper-notes §8: 40.55 M MACs
        ("resnet18", 11_173_962, 555_422_720),  # paper-notes §8: 11,173,962 params, 555.4 M MACs
        ("vgg16", 14_724_042, 313_201_664),  # paper-notes §8: 14,724,042 params, 313.2 M MACs
        # ViT: 6 blocks × (qkv 256·768 + out 256·256 + fc1/fc2 2·256·512 weights) over 64 tokens
        # + attention 2·64·64·256 per block + patch embedding 48·256·64 + head 256·10.
        ("vit", 3_172_714, 6 * (64 * (256 * 768 + 256 * 256 + 2 * 256 * 512) + 2 * 64 * 64 * 256)
         + 64 * 48 * 256 + 2560),
    ],
)
def test_reference_sizes(name, params, macs):
    model = build_model(name)
    cost = count_macs(model, X1)
    assert cost.total_params == params
    assert cost.total_macs == macs


def test_vgg16_counts_by_hand():
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    ins = [3] + widths[:-1]
    sides = [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
    conv_w = sum(i * o * 9 for i, o in zip(ins, widths, strict=True))
    conv_macs = sum(i * o * 9 * s * s for i, o, s in zip(ins, widths, sides, strict=True))
    cost = count_macs(build_model("vgg16"), X1)
    assert cost.total_params == conv_w + 2 * sum(widths) + 512 * 10 + 10
    assert cost.total_macs == conv_macs + 5120


def test_vit_qkv_options():
    joint, sep = ViT(qkv="joint"), ViT(qkv="separate")
    assert count_params(joint).total_params == count_params(sep).total_params == 3_172_714
    assert "blocks.0.attn.to_qkv.weight" in joint.state_dict()
    assert {"blocks.0.attn.to_q.weight", "blocks.0.attn.to_k.weight"} <= set(sep.state_dict())
    # Same function when the separate projections hold the joint weight's three row blocks.
    small = {"dim": 32, "num_layers": 2, "heads": 4, "dim_head": 8, "mlp_dim": 64}
    torch.manual_seed(0)
    j = ViT(qkv="joint", **small).eval()
    s = ViT(qkv="separate", **small).eval()
    sd = {}
    for k, v in j.state_dict().items():
        if k.endswith("to_qkv.weight"):
            q, kk, vv = v.chunk(3, dim=0)
            base = k[: -len("to_qkv.weight")]
            sd.update({base + "to_q.weight": q, base + "to_k.weight": kk, base + "to_v.weight": vv})
        else:
            sd[k] = v
    s.load_state_dict(sd, strict=True)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(s(x), j(x), rtol=1e-5, atol=1e-6)


def test_vit_fused_attn_same_function_and_macs():
    small = {"dim": 32, "num_layers": 2, "heads": 4, "dim_head": 8, "mlp_dim": 64}
    torch.manual_seed(0)
    explicit = ViT(fused_attn=False, **small).eval()
    fused = ViT(**small).eval()  # SDPA is the default
    assert all(b.attn.fused_attn for b in fused.blocks) and not any(b.attn.fused_attn for b in explicit.blocks)
    fused.load_state_dict(explicit.state_dict(), strict=True)  # same parameters, same names
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(fused(x), explicit(x), rtol=1e-5, atol=1e-6)
    # SDPA's MACs are counted like the explicit matmuls: per block 2·heads·T²·dim_head, T = 64 tokens.
    e, f = count_macs(explicit, x[:1]), count_macs(fused, x[:1])
    assert f.total_macs == e.total_macs
    linear = sum(r.macs for r in e.rows if r.kind == "Linear")
    assert e.total_macs - linear == 2 * 2 * 4 * 64 * 64 * 8
    # Factorize / merge round trip keeps the flag and the function.
    fac = factorize(fused, depth=2)
    merged = merge(fac)
    assert all(b.attn.fused_attn for b in merged.blocks)
    torch.testing.assert_close(merged(x), fac(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="fused_attn"):
        ViT(fused_attn="yes", **small)


def test_option_a_shortcut_zero_pads():
    blk = BasicBlock(4, 8, stride=2, shortcut="A")
    x = torch.randn(2, 4, 6, 6)
    sc = blk.shortcut(x)
    assert sc.shape == (2, 8, 3, 3)
    assert torch.equal(sc[:, 2:6], x[:, :, ::2, ::2])
    assert torch.count_nonzero(sc[:, :2]) == 0 and torch.count_nonzero(sc[:, 6:]) == 0
    assert isinstance(BasicBlock(4, 4).shortcut, nn.Identity)
    assert sum(p.numel() for p in blk.shortcut.parameters()) == 0
    assert isinstance(BasicBlock(4, 8, 2, "B").shortcut[0], nn.Conv2d)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="`width` must be an int >= 1"):
        ResNet20(width=0)
    with pytest.raises(ValueError, match="`blocks` must list 4"):
        ResNet18(blocks=(2, 2))
    with pytest.raises(ValueError, match="unknown VGG cfg 'vgg99'"):
        VGG("vgg99")
    with pytest.raises(ValueError, match="`qkv` must be 'joint' or 'separate'"):
        ViT(qkv="fused")
    with pytest.raises(ValueError, match="not divisible by `patch`"):
        ViT(image_size=30, patch=4)


# -- LoRITa on each model ---------------------------------------------------------------------
SMALL = {
    "resnet20": {"width": 4},
    "resnet18": {"width": 4, "blocks": (1, 1, 1, 1)},
    "vgg16": {"width_mult": 1 / 16},
    "vit": {"dim": 32, "num_layers": 2, "heads": 4, "dim_head": 8, "mlp_dim": 48},
    "vit-separate": {"dim": 32, "num_layers": 2, "heads": 4, "dim_head": 8, "mlp_dim": 48, "qkv": "separate"},
}


@pytest.mark.parametrize("key", sorted(SMALL))
@pytest.mark.parametrize("depth", [2, 3])
def test_merge_is_exact_and_loads_strictly(key, depth):
    name = key.split("-")[0]
    torch.manual_seed(depth)
    plain = build_model(name, **SMALL[key])
    t, x = default_targets(name)
    fac = factorize(plain, depth=depth, target_modules=t, exclude_modules=x)
    _randomize_bn(fac, seed=depth)
    fac.eval()
    inp = torch.randn(4, 3, 32, 32)
    merged = merge(fac).eval()
    fresh = build_model(name, **SMALL[key])
    fresh.load_state_dict(merged.state_dict(), strict=True)  # the unmodified class
    fresh.eval()
    with torch.no_grad():
        ref = fac(inp)
        for out in (merged(inp), fresh(inp)):
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert set(fresh.state_dict()) == set(plain.state_dict())
    assert count_params(merged).total_params == count_params(plain).total_params


def test_default_targets():
    assert set(MODELS) >= {"fcn", "resnet20", "resnet18", "vgg16", "vit"}
    # CNNs: every conv and the classifier.
    r20 = build_model("resnet20")
    names = [n for n, _ in weight_layers(r20, *default_targets("resnet20"))]
    assert len(names) == 19 + 1 and names[0] == "conv1" and names[-1] == "linear"
    vgg = build_model("vgg16")
    assert len(weight_layers(vgg, *default_targets("vgg16"))) == 13 + 1
    r18 = build_model("resnet18", width=4)
    r18_names = [n for n, _ in weight_layers(r18, *default_targets("resnet18"))]
    assert len(r18_names) == 1 + 16 + 3 + 1 and "layer2.0.shortcut.0" in r18_names
    # ViT: the attention projections and the MLP of every block, nothing else.
    for qkv, per_block in (("joint", 4), ("separate", 6)):
        v = build_model("vit", qkv=qkv, **{k: s for k, s in SMALL["vit"].items()})
        fac = factorize(v, depth=3, target_modules=default_targets("vit")[0])
        kinds = {n: type(m) for n, m in fac.named_modules()}
        factored = [n for n, k in kinds.items() if k is FactorizedLinear]
        assert len(factored) == 2 * per_block
        assert all(n.startswith("blocks.") for n in factored)
        assert kinds["patch_embed.proj"] is nn.Linear and kinds["head"] is nn.Linear


def test_factorized_resnet_uses_conv_factors():
    fac = factorize(build_model("resnet20", width=4), depth=3)
    convs = [m for m in fac.modules() if isinstance(m, FactorizedConv2d)]
    assert len(convs) == 19
    assert all(len(m.factors) == 3 and m.factors[1].shape == (m.out_channels, m.out_channels) for m in convs)


@pytest.mark.parametrize("name", ["fcn", "resnet20", "resnet18", "vgg16", "vit"])
def test_default_cfg_describes_the_model(name):
    from lorita.models import DEFAULT_CFGS, MODELS, build_model, default_targets

    cfg = DEFAULT_CFGS[name]
    assert set(DEFAULT_CFGS) == set(MODELS)
    model = build_model(name).eval()
    with torch.no_grad():
        y = model(torch.zeros(2, *cfg["input_shape"]))
    assert y.shape == (2, cfg["num_classes"])
    assert default_targets(name) == (cfg["target_modules"], cfg["exclude_modules"])
    fact = lorita.factorize(model, depth=2, target_modules=cfg["target_modules"])
    n_fact = sum(isinstance(m, lorita.layers.FactorizedLayer) for m in fact.modules())
    assert n_fact >= (2 if name == "fcn" else 4)

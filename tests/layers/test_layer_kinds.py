"""Layer kinds beyond Linear/Conv2d: each works (factorize, exact merge, truncate, split, MACs)
or is skipped with a stated reason — never a crash, never a silently wrong weight."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import lorita
from deploy_fixtures import assert_same_state, state_copy
from lorita.layers import FactorizedConv1d, LowRankConv1d
from lorita.layers.attention import FactorizedMultiheadAttention

torch.manual_seed(0)


def _seq(layer: nn.Module) -> nn.Sequential:
    return nn.Sequential(layer)


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


class _Attn(nn.Module):
    def __init__(self, **kw) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


# (id, model builder, input, factorized class of the target, target fqn, weight matrix (m, n), rank to test)
SUPPORTED = [
    ("linear", lambda: _seq(nn.Linear(6, 5)), _x(4, 6), lorita.FactorizedLinear, "0", (5, 6), 2),
    ("conv2d", lambda: _seq(nn.Conv2d(3, 4, 3, padding=1)), _x(2, 3, 5, 5), lorita.FactorizedConv2d, "0", (4, 27), 2),
    ("conv2d_reflect_stride", lambda: _seq(nn.Conv2d(3, 4, 3, 2, 1, padding_mode="reflect")), _x(2, 3, 6, 6),
     lorita.FactorizedConv2d, "0", (4, 27), 3),
    ("conv1d", lambda: _seq(nn.Conv1d(3, 5, 3, stride=2)), _x(2, 3, 9), FactorizedConv1d, "0", (5, 9), 2),
    ("conv1d_same", lambda: _seq(nn.Conv1d(3, 5, 3, padding="same", dilation=2)), _x(2, 3, 9), FactorizedConv1d,
     "0", (5, 9), 2),
    ("mha", lambda: _Attn(), _x(2, 5, 8), FactorizedMultiheadAttention, "attn", (24, 8), 3),
    ("mha_bias_kv", lambda: _Attn(add_bias_kv=True, add_zero_attn=True), _x(2, 5, 8), FactorizedMultiheadAttention,
     "attn", (24, 8), 3),
    ("linear_out_1", lambda: _seq(nn.Linear(6, 1)), _x(4, 6), lorita.FactorizedLinear, "0", (1, 6), 1),
    ("linear_in_1", lambda: _seq(nn.Linear(1, 6)), _x(4, 1), lorita.FactorizedLinear, "0", (6, 1), 1),
]
IDS = [c[0] for c in SUPPORTED]


def _weight_name(fqn: str, cls: type) -> str:
    """The rank-dict key of a target's (first) weight: attention uses `<fqn>.in_proj`."""
    return f"{fqn}.in_proj" if cls is FactorizedMultiheadAttention else fqn


@pytest.mark.parametrize("case", SUPPORTED, ids=IDS)
def test_factorize_merge_is_exact_and_keeps_the_architecture(case):
    _, build, x, cls, fqn, _, _ = case
    model = build().eval()
    before = state_copy(model)
    fact = lorita.factorize(model, depth=3)
    assert isinstance(fact.get_submodule(fqn), cls)
    assert not any(m.training for m in fact.modules())  # eval mode carried over
    assert_same_state(model, before)  # input untouched (copy by default)
    dense = lorita.merge(fact)
    assert not any(m.training for m in dense.modules())
    with torch.no_grad():
        torch.testing.assert_close(dense(x), fact(x), rtol=1e-5, atol=1e-6)
    assert type(dense.get_submodule(fqn)) is type(model.get_submodule(fqn))
    fresh = build()
    fresh.load_state_dict(dense.state_dict(), strict=True)  # original class, same keys and shapes


@pytest.mark.parametrize("case", SUPPORTED, ids=IDS)
def test_preserve_init_computes_the_original(case):
    _, build, x, _, _, _, _ = case
    model = build().eval()
    fact = lorita.factorize(model, depth=2, init="preserve").eval()
    with torch.no_grad():
        torch.testing.assert_close(fact(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", SUPPORTED, ids=IDS)
def test_truncate_is_eckart_young_and_split_matches_truncate(case):
    _, build, x, cls, fqn, (m, n), r = case
    model = build().eval()
    key = _weight_name(fqn, cls)
    S = lorita.singular_values(model)[key]
    assert S.shape == (min(m, n),)
    trunc = lorita.truncate(model, {key: r}).eval()
    layers = dict(lorita.surgery.weight_layers(trunc))
    w_new = lorita.effective_weight(layers[key]).reshape(m, -1).double()
    w_old = lorita.effective_weight(dict(lorita.surgery.weight_layers(model))[key]).reshape(m, -1).double()
    assert torch.linalg.matrix_rank(w_new, atol=1e-5).item() == r
    err = float(((w_new - w_old) ** 2).sum())
    assert err == pytest.approx(float((S[r:].double() ** 2).sum()), rel=1e-4, abs=1e-8)
    low = lorita.to_low_rank(model, {key: r}).eval()
    with torch.no_grad():
        torch.testing.assert_close(low(x), trunc(x), rtol=1e-4, atol=1e-5)
        full = lorita.to_low_rank(model, {key: min(m, n)}).eval()
        torch.testing.assert_close(full(x), model(x), rtol=1e-4, atol=1e-5)


def test_conv1d_split_and_macs_by_hand():
    model = _seq(nn.Conv1d(3, 5, 3, stride=2))  # L=9 -> L_out=4; weight (5, 9)
    x = _x(2, 3, 9)
    dense = lorita.count_macs(model, x)
    assert dense.row("0").macs == 4 * 5 * 3 * 3
    low = lorita.to_low_rank(model, {"0": 2})
    assert isinstance(low[0], LowRankConv1d)
    rep = lorita.count_macs(low, x)
    assert rep.row("0").macs == 4 * 2 * 9 + 4 * 5 * 2
    assert rep.row("0").params == 2 * 9 + 5 * 2 + 5
    assert rep.total_flops == 2 * rep.total_macs


def test_attention_macs_by_hand_and_low_rank_keeps_it_dense(caplog):
    model = _Attn().eval()  # E=8, L=5: in_proj 5·8·24, out 5·8·8, QKᵀ and AV 2·5·5·8
    x = _x(1, 5, 8)
    rep = lorita.count_macs(model, x)
    assert rep.row("attn").macs == 5 * 8 * 24 + 5 * 8 * 8 + 2 * 5 * 5 * 8
    fact = lorita.factorize(model, depth=2)  # + the factor products, once per forward (batch 1 here)
    assert lorita.count_macs(fact, x).row("attn").macs == rep.row("attn").macs + 24 * 8 * 8 + 8 * 8 * 8
    with caplog.at_level(logging.INFO, logger="lorita.surgery"):
        low = lorita.to_low_rank(model, {"attn.in_proj": 2, "attn.out_proj": 3})
    assert type(low.attn) is nn.MultiheadAttention
    assert "attention projections are not split" in caplog.text
    assert torch.linalg.matrix_rank(low.attn.in_proj_weight.detach()).item() == 2
    assert torch.linalg.matrix_rank(low.attn.out_proj.weight.detach()).item() == 3
    assert set(low.state_dict()) == set(model.state_dict())


def test_ranks_chosen_on_the_factorized_form_apply_to_the_merged_form():
    model = _Attn()
    fact = lorita.factorize(model, depth=2)
    ranks_f = lorita.select_ranks(fact, lorita.EnergyThreshold(0.9))
    dense = lorita.merge(fact)
    ranks_d = lorita.select_ranks(dense, lorita.EnergyThreshold(0.9))
    assert ranks_f == ranks_d
    assert set(ranks_d) == {"attn.in_proj", "attn.out_proj"}
    lorita.truncate(dense, ranks_d)  # the names resolve on the dense model


def test_attention_inside_transformer_encoder_trains_and_merges():
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 1, enable_nested_tensor=False
    ).eval()
    x = _x(2, 4, 8)
    fact = lorita.factorize(enc, depth=2, init="preserve")
    with torch.no_grad():  # eval + no_grad: PyTorch's fused fast path must not be taken on factors
        torch.testing.assert_close(fact.eval()(x), enc(x), rtol=1e-5, atol=1e-5)
    fact.train()
    opt = torch.optim.SGD(fact.parameters(), lr=0.1)
    f0 = fact.layers[0].self_attn.in_proj.factors[0].detach().clone()
    fact(x).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(fact.layers[0].self_attn.in_proj.factors[0], f0)  # gradients reach the factors
    fact.eval()
    dense = lorita.merge(fact).eval()
    with torch.no_grad():
        torch.testing.assert_close(dense(x), fact(x), rtol=1e-5, atol=1e-5)


# ---- skipped with a reason, never touched ---------------------------------------------------------------


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # tied
        self.c = nn.Linear(4, 2)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.again = self.a  # one module under two names
        self.c = nn.Linear(4, 2)

    def forward(self, x):
        return self.c(self.again(self.a(x)))


SKIPPED = [
    ("depthwise", lambda: nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1)), "0", "depthwise"),
    ("grouped", lambda: nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1)), "0", "groups=2"),
    ("grouped_conv1d", lambda: nn.Sequential(nn.Conv1d(4, 6, 3, groups=2), nn.Conv1d(6, 2, 1)), "0", "groups=2"),
    ("zero_dim", lambda: nn.Sequential(nn.Linear(0, 3), nn.Linear(3, 2)), "0", "zero dimension"),
    ("mha_kdim", lambda: nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2, kdim=4, vdim=4), "fc": nn.Linear(8, 2)}),
     "attn", "separate q/k/v"),
    ("tied", _Shared, "a", "shared with `b`"),
    ("same_object", _Twice, "again", "same module object as `a`"),
]


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
@pytest.mark.parametrize("case", SKIPPED, ids=[c[0] for c in SKIPPED])
def test_unsupported_layers_are_skipped_with_a_reason_and_left_alone(case, caplog):
    _, build, fqn, reason = case
    model = build()
    plan = lorita.factorize_plan(model)
    assert fqn in plan.skipped and reason in plan.skipped[fqn]
    assert fqn not in plan.names
    with caplog.at_level(logging.WARNING, logger="lorita.surgery"):
        fact = lorita.factorize(model, depth=3)
    assert reason in caplog.text
    for name, mod in model.named_modules():
        if name == fqn or name.startswith(fqn + "."):
            assert type(fact.get_submodule(name)) is type(mod)
    assert_same_state(fact.get_submodule(fqn), state_copy(model.get_submodule(fqn)))


def test_explicit_ranks_for_skipped_layers_raise_naming_them():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1))
    before = state_copy(model)
    with pytest.raises(ValueError, match=r"`0`: Conv2d with groups=2.*drop it from `ranks`"):
        lorita.truncate(model, {"0": 1}, inplace=True)
    assert_same_state(model, before)


def test_out_proj_named_explicitly_points_to_the_attention_module():
    model = _Attn()
    plan = lorita.factorize_plan(model, target_modules=["attn", "out_proj"])
    assert plan.names == ["attn"]
    assert plan.skipped == {}  # inside the targeted attention: not a separate skip
    with pytest.raises(ValueError, match="target the attention module itself"):
        lorita.factorize(model, target_modules=["out_proj"])


def test_tied_weights_stay_tied_after_factorize_and_merge():
    model = _Shared()
    dense = lorita.merge(lorita.factorize(model, depth=2))
    assert dense.a.weight is dense.b.weight


@pytest.mark.parametrize("rank", [0, -1, 7])
def test_rank_outside_range_is_refused_before_anything_changes(rank):
    model = _seq(nn.Linear(6, 1))  # min(m, n) = 1
    before = state_copy(model)
    for fn in (lorita.truncate, lorita.to_low_rank):
        with pytest.raises(ValueError, match=r"`0`: rank -?\d+ is outside \[1, min\(out, in·k·k\)=1\]"):
            fn(model, {"0": rank}, inplace=True)
    assert_same_state(model, before)
    with pytest.raises(ValueError, match="`rank` must be an int >= 1"):
        lorita.FixedRank(0)


def test_dimension_one_layer_at_rank_one_is_unchanged_and_not_split():
    model = _seq(nn.Linear(6, 1))
    low = lorita.to_low_rank(model, {"0": 1})
    assert type(low[0]) is nn.Linear  # 1·(6+1) >= 6·1: splitting would not save MACs
    torch.testing.assert_close(low[0].weight, model[0].weight, rtol=1e-6, atol=1e-7)
    assert lorita.select_ranks(model, lorita.EnergyThreshold(0.5)) == {"0": 1}
    with pytest.raises(ValueError, match="budget 0.01 cannot be met: even rank 1"):
        lorita.select_ranks(model, lorita.ParamBudget(0.01))


def test_zero_weight_gets_rank_one_never_zero():
    model = _seq(nn.Linear(5, 4))
    with torch.no_grad():
        model[0].weight.zero_()
    for policy in (lorita.EnergyThreshold(0.99), lorita.GlobalThreshold(0.5), lorita.RankRatio(0.01)):
        assert lorita.select_ranks(model, policy) == {"0": 1}


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_scripted_and_traced_layers_match_eager():
    cases = [
        (lorita.FactorizedLinear(5, 4, depth=3, forward_mode="chain"), _x(3, 5)),
        (lorita.FactorizedLinear(5, 4, depth=3, forward_mode="merged"), _x(3, 5)),
        (lorita.FactorizedConv2d(3, 4, 3, padding=1, depth=2, forward_mode="chain"), _x(2, 3, 5, 5)),
        (lorita.FactorizedConv2d(3, 4, 3, padding="same", depth=3), _x(2, 3, 5, 5)),
        (FactorizedConv1d(3, 4, 3, stride=2, depth=2, forward_mode="chain"), _x(2, 3, 9)),
        (lorita.LowRankLinear(5, 4, 2), _x(3, 5)),
        (lorita.LowRankConv2d(3, 4, 3, 2, padding=1), _x(2, 3, 5, 5)),
        (LowRankConv1d(3, 4, 3, 2), _x(2, 3, 9)),
    ]
    for layer, x in cases:
        eager = layer(x)
        torch.testing.assert_close(torch.jit.script(layer)(x), eager, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(torch.jit.trace(layer, x, check_trace=False)(x), eager, rtol=1e-6, atol=1e-6)


def test_mac_budget_counts_attention_projections_per_token():
    from lorita.ranks.policies import layer_infos

    model = _Attn()
    x = _x(2, 5, 8)
    infos = {i.name: i.positions for i in layer_infos(model, example_inputs=x)}
    assert infos == {"attn.in_proj": 5, "attn.out_proj": 5}  # 5 tokens per sample
    fact = lorita.factorize(model, depth=2)
    assert {i.name: i.positions for i in layer_infos(fact, example_inputs=x)} == infos
    ranks = lorita.select_ranks(fact, lorita.MacBudget(0.5, x))
    assert ranks == lorita.select_ranks(lorita.merge(fact), lorita.MacBudget(0.5, x))
    # deployable cost of the projections: min(r·(m+n), m·n) per token, within the budget
    cost = sum(min(r * (m + n), m * n) for r, (m, n) in zip(ranks.values(), [(24, 8), (8, 8)], strict=True))
    assert cost <= 0.5 * (24 * 8 + 8 * 8)

"""``MacBudget``/``ParamBudget`` with ``layer_cap``: hand-computed ranks, both budgets held, the
plain policy at cap 1, parsing and printing, bad caps named."""

import pytest
import torch
from torch import nn

import lorita
from lorita.ranks.policies import LayerInfo, _budget_ranks, deployable_cost, parse_policy, policy_string


def _info(name, S, shape, positions=None):
    return LayerInfo(name, torch.tensor(S, dtype=torch.float64), shape, positions)


# a: 8x8, 1 output position, flat spectrum; b: 8x8, 10 positions, steep spectrum.
# Dense MACs 64 + 640 = 704; a rank costs 16 MACs in a, 160 in b (dense from rank 4 up).
STEEP = [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625]
INFOS = [_info("a", [1.0] * 8, (8, 8), 1), _info("b", STEEP, (8, 8), 10)]


def _cap_start(cap):
    return {i.name: lorita.LayerBudget(cap)(i) for i in INFOS}


def test_plain_budget_keeps_a_cheap_flat_layer_dense_and_the_cap_splits_it():
    # budget 0.5 = 352. Plain: b's tail, then b's S[1] (0.1875 of its energy per 160 MACs) is the
    # cheapest loss; b at rank 1 (160) + a dense (64) = 224 <= 352, a never touched.
    assert _budget_ranks(INFOS, 0.5, use_macs=True) == {"a": 8, "b": 1}
    # cap 0.5: LayerBudget(0.5) rank = floor(0.5·64/16) = 2 in both; 32 + 320 = 352 <= 352: done.
    start = _cap_start(0.5)
    assert start == {"a": 2, "b": 2}
    assert _budget_ranks(INFOS, 0.5, use_macs=True, start=start) == {"a": 2, "b": 2}


def test_the_cap_start_is_cut_further_where_the_spectra_say():
    # budget 0.3 = 211.2. From {2, 2} (352): b 2 -> 1 loses 0.1875/160 per MAC, a 2 -> 1 loses
    # 0.125/16: b goes; 32 + 160 = 192 <= 211.2.
    assert _budget_ranks(INFOS, 0.3, use_macs=True, start=_cap_start(0.5)) == {"a": 2, "b": 1}
    # plain: b -> 1 (224 > 211.2), then a is cut one flat value at a time to rank 3 (48 + 160 = 208)
    assert _budget_ranks(INFOS, 0.3, use_macs=True) == {"a": 3, "b": 1}


def _random_spectra_model(seed=0):
    g = torch.Generator().manual_seed(seed)
    return nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(256, 96), nn.ReLU(),
                         nn.Linear(96, 10)).apply(
        lambda m: m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * torch.logspace(
            0, -2, m.weight.shape[0]).view(-1, *[1] * (m.weight.dim() - 1)))
        if isinstance(m, nn.Conv2d | nn.Linear) else None)


def _layer_cost(mod, rank):
    m, n = mod.weight.shape[0], mod.weight[0].numel()
    return deployable_cost(m, n, rank), m * n


@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.2])
@pytest.mark.parametrize("cap", [0.6, 0.4])
@pytest.mark.parametrize("multiple", [1, 4])
def test_capped_mac_budget_holds_the_total_and_every_layer(fraction, cap, multiple):
    model = _random_spectra_model()
    x = torch.zeros(1, 8, 8, 8)
    ranks = lorita.select_ranks(model, lorita.MacBudget(fraction, x, layer_cap=cap), multiple=multiple)
    low = lorita.to_low_rank(model, ranks)
    assert lorita.count_macs(low, x).total_macs <= fraction * lorita.count_macs(model, x).total_macs
    mods = dict(model.named_modules())
    for name, r in ranks.items():
        cost, dense = _layer_cost(mods[name], r)
        assert r == 1 or cost <= cap * dense, (name, r, cost, dense)
        # never above the cap's own start rank
        assert r <= max(1, lorita.select_ranks(model, lorita.LayerBudget(cap), multiple=multiple)[name])


def test_cap_one_is_the_plain_budget_and_caps_only_lower_ranks():
    model = _random_spectra_model(1)
    x = torch.zeros(1, 8, 8, 8)
    plain = lorita.select_ranks(model, lorita.MacBudget(0.3, x))
    assert lorita.select_ranks(model, lorita.MacBudget(0.3, x, layer_cap=1.0)) == plain
    assert lorita.select_ranks(model, lorita.ParamBudget(0.3, layer_cap=1.0)) == lorita.select_ranks(
        model, lorita.ParamBudget(0.3))
    capped = lorita.select_ranks(model, lorita.ParamBudget(0.3, layer_cap=0.3))
    layer = lorita.select_ranks(model, lorita.LayerBudget(0.3))
    # a cap equal to the total budget leaves no room: exactly LayerBudget's ranks
    assert capped == layer


def test_capped_policies_parse_and_print():
    x = torch.zeros(1, 3)
    pol = parse_policy("macs:0.2,cap=0.5", example_inputs=x)
    assert pol == lorita.MacBudget(0.2, x, layer_cap=0.5) and policy_string(pol) == "macs:0.2,cap=0.5"
    assert parse_policy("params:0.1, cap=0.25") == lorita.ParamBudget(0.1, layer_cap=0.25)
    assert policy_string(lorita.ParamBudget(0.1)) == "params:0.1"
    assert parse_policy(policy_string(lorita.ParamBudget(0.3, layer_cap=0.7))) == lorita.ParamBudget(0.3, layer_cap=0.7)


@pytest.mark.parametrize("text,err,match", [
    ("ratio:0.2,cap=0.5", ValueError, "only params, macs and latency take one, `,cap=C`"),
    ("macs:0.2,size=1", ValueError, "invalid option 'size=1'"),
    ("macs:0.2,cap=big", ValueError, "invalid cap 'big'"),
    ("params:0.2,cap=0", ValueError, r"`layer_cap` must be in \(0, 1\], got 0"),
    ("params:0.2,cap=1.5", ValueError, r"`layer_cap` must be in \(0, 1\], got 1.5"),
])
def test_bad_caps_are_named(text, err, match):
    with pytest.raises(err, match=match):
        parse_policy(text, example_inputs=torch.zeros(1, 3))


def test_a_non_number_cap_is_a_type_error():
    with pytest.raises(TypeError, match="`layer_cap` must be a number"):
        lorita.ParamBudget(0.2, layer_cap="0.5")


def test_search_budget_refuses_a_cap_and_points_to_start():
    with pytest.raises(ValueError, match="takes no `layer_cap`; give the capped policy as `start`"):
        lorita.GreedySearch(tolerance=1.0, budget=lorita.ParamBudget(0.2, layer_cap=0.5))
    # as a start the capped policy is accepted
    lorita.GreedySearch(tolerance=1.0, start=lorita.ParamBudget(0.5, layer_cap=0.5))


def test_a_cap_start_below_the_multiple_is_kept_like_layer_budget():
    conv = nn.Sequential(nn.Conv2d(16, 16, 3))  # (16, 144): rank 8 costs 8·160 = 1280 of 2304 (0.556)
    x = torch.zeros(1, 16, 6, 6)
    with pytest.raises(ValueError, match="budget 0.5 cannot be met"):
        lorita.select_ranks(conv, lorita.MacBudget(0.5, x), multiple=8)
    # LayerBudget(0.5): floor(0.5·2304/160) = 7, below 8, kept; 7·160 = 1120 <= 1152
    assert lorita.select_ranks(conv, lorita.MacBudget(0.5, x, layer_cap=0.5), multiple=8) == {"0": 7}

"""Rank policies on hand-made spectra: values, minimality, budgets met, parsing."""

import pytest
import torch
from torch import nn

import lorita
from lorita.ranks.policies import LayerInfo, _budget_ranks, deployable_cost, parse_policy


def _info(name, S, shape, positions=None):
    return LayerInfo(name, torch.tensor(S, dtype=torch.float64), shape, positions)


def _model_with_spectra(spectra):
    """Sequential of Linear layers whose weights have exactly the given singular values."""
    layers = []
    g = torch.Generator().manual_seed(0)
    for (m, n), S in spectra:
        lin = nn.Linear(n, m, bias=False).double()
        U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        k = len(S)
        with torch.no_grad():
            lin.weight.copy_(U[:, :k] @ torch.diag(torch.tensor(S, dtype=torch.float64)) @ V[:, :k].T)
        layers.append(lin)
    return nn.Sequential(*layers)


SPECTRA = [((6, 8), [8.0, 4.0, 2.0, 1.0, 0.5, 0.25]), ((5, 6), [1.0, 0.9, 0.1, 0.01, 0.001])]


def test_layer_policies_on_known_spectra():
    model = _model_with_spectra(SPECTRA)
    assert lorita.select_ranks(model, lorita.FixedRank(3)) == {"0": 3, "1": 3}
    assert lorita.select_ranks(model, lorita.FixedRank(100)) == {"0": 6, "1": 5}  # clamped
    assert lorita.select_ranks(model, lorita.RankRatio(0.5)) == {"0": 3, "1": 2}
    # energies layer 0: squares 64,16,4,1,.25,.0625 (total 85.3125): r=1 -> .750, r=2 -> .938, r=3 -> .985
    assert lorita.select_ranks(model, lorita.EnergyThreshold(0.95)) == {"0": 3, "1": 2}
    assert lorita.select_ranks(model, lorita.EnergyThreshold(0.75)) == {"0": 1, "1": 2}
    # global: sigma_i/sigma_1 >= 0.1 -> layer0: 8,4,2,1 ; layer1: 1,.9,.1
    assert lorita.select_ranks(model, lorita.GlobalThreshold(0.1)) == {"0": 4, "1": 3}


def test_policy_strings_parse_to_dataclasses():
    assert parse_policy("energy:0.99") == lorita.EnergyThreshold(0.99)
    assert parse_policy("ratio:0.1") == lorita.RankRatio(0.1)
    assert parse_policy("global:0.05") == lorita.GlobalThreshold(0.05)
    assert parse_policy("params:0.05") == lorita.ParamBudget(0.05)
    assert parse_policy("rank:16") == lorita.FixedRank(16)
    assert parse_policy("macs:0.1", example_inputs=torch.zeros(1, 3)).fraction == 0.1


@pytest.mark.parametrize("text,match", [
    ("energy", "expected kind:value"),
    ("entropy:0.9", "unknown policy kind 'entropy'"),
    ("energy:abc", "invalid value 'abc'"),
    ("energy:1.5", r"`energy` must be in \(0, 1\]"),
    ("params:0", r"`fraction` must be in \(0, 1\]"),
    ("params:1.2", r"`fraction` must be in \(0, 1\]"),
    ("rank:0", "`rank` must be an int >= 1"),
    ("macs:0.1", "MacBudget needs `example_inputs`"),
])
def test_bad_policy_strings_name_the_problem(text, match):
    with pytest.raises(ValueError, match=match):
        parse_policy(text)


def test_param_budget_is_met_and_discards_least_energy_per_param():
    infos = [_info("a", [10.0, 1.0, 0.1, 0.01], (4, 100)), _info("b", [5.0, 4.0, 3.0, 2.0], (4, 100))]
    dense = 2 * 400
    for frac in (0.9, 0.6, 0.5, 0.3):
        ranks = _budget_ranks(infos, frac, use_macs=False)
        cost = sum(deployable_cost(4, 100, ranks[n]) for n in "ab")
        assert cost <= frac * dense
        assert all(r >= 1 for r in ranks.values())
    # At 0.5 of 800 = 400 weights, 104 per rank: 3 ranks in total fit (312 <= 400 < 416).
    # Least normalized energy lost: keep a at rank 1 (it holds 99% there), b keeps 2.
    assert _budget_ranks(infos, 0.5, use_macs=False) == {"a": 1, "b": 2}


def test_budget_counts_a_layer_dense_until_splitting_pays():
    # 10x10: split pays only for r < 5 (r·20 < 100).
    infos = [_info("sq", [1.0] * 10, (10, 10))]
    assert _budget_ranks(infos, 1.0, use_macs=False) == {"sq": 10}
    ranks = _budget_ranks(infos, 0.8, use_macs=False)
    assert ranks == {"sq": 4} and deployable_cost(10, 10, 4) == 80


def test_infeasible_budget_says_the_floor():
    infos = [_info("a", [1.0, 0.5], (2, 100))]
    with pytest.raises(ValueError, match=r"budget 0.001 cannot be met: even rank 1 .* keeps 0.5100"):
        _budget_ranks(infos, 0.001, use_macs=False)


def test_mac_budget_weights_layers_by_output_positions():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)  # 64 positions at 8x8
            self.fc = nn.Linear(512, 8)  # 1 position

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    model = Net()
    x = torch.zeros(2, 8, 8, 8)
    ranks = lorita.select_ranks(model, lorita.MacBudget(0.5, x))
    macs = lorita.count_macs(lorita.to_low_rank(model, ranks), x).total_macs
    dense = lorita.count_macs(model, x).total_macs
    assert macs <= 0.5 * dense
    # The param budget at the same fraction treats fc (4096 weights) as the big layer instead.
    pranks = lorita.select_ranks(model, lorita.ParamBudget(0.5))
    assert pranks["fc"] < 8 and ranks["fc"] == 8


def test_unknown_policy_object_is_a_type_error(mlp):
    with pytest.raises(TypeError, match="unknown rank policy"):
        lorita.select_ranks(mlp, 0.5)


def test_rank_one_on_a_small_head_is_warned_naming_the_layer(caplog):
    # body 40x40 with a flat spectrum; "head" 10x40 with a flat spectrum (rank 1 keeps 10% energy)
    model = _model_with_spectra([((40, 40), [1.0] * 40), ((10, 40), [1.0] * 10)])
    with caplog.at_level("WARNING", logger="lorita.ranks.policies"):
        ranks = lorita.select_ranks(model, lorita.RankRatio(0.1))
    assert ranks == {"0": 4, "1": 1}
    msgs = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(msgs) == 1
    assert "`1` (10×40, max rank 10) gets rank 1" in msgs[0] and "10.0% of its energy" in msgs[0]
    assert "`exclude_modules='1'`" in msgs[0]


def test_rank_one_keeping_most_energy_is_not_warned(caplog):
    model = _model_with_spectra([((10, 40), [10.0, 0.1, 0.1])])  # rank 1 keeps 99.98%
    with caplog.at_level("WARNING", logger="lorita.ranks.policies"):
        assert lorita.select_ranks(model, lorita.RankRatio(0.1)) == {"0": 1}
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_budget_policies_choosing_rank_one_are_not_warned(caplog):
    model = _model_with_spectra([((40, 40), [1.0] * 40), ((10, 40), [1.0] * 10)])
    with caplog.at_level("WARNING", logger="lorita.ranks.policies"):
        ranks = lorita.select_ranks(model, lorita.ParamBudget(0.07))
    assert ranks["1"] == 1 and not [r for r in caplog.records if r.levelname == "WARNING"]


def test_rank_levels_under_a_multiple():
    from lorita.ranks._budget import levels_for as _levels

    assert _levels(5, 1) == [5, 4, 3, 2, 1]
    assert _levels(64, 8) == [64, 56, 48, 40, 32, 24, 16, 8]
    assert _levels(20, 8) == [20, 16, 8]
    assert _levels(10, 8) == [10, 8]
    assert _levels(8, 8) == [8] and _levels(3, 8) == [3]


def test_budget_with_a_multiple_drops_whole_blocks_and_meets_the_budget():
    # a: 20x100 (max rank 20), b: 16x100 (max rank 16); 120 / 116 weights per rank.
    Sa = [10.0 / (i + 1) for i in range(20)]
    Sb = [float(16 - i) for i in range(16)]  # flatter: its blocks hold more normalized energy
    infos = [_info("a", Sa, (20, 100)), _info("b", Sb, (16, 100))]
    dense = 20 * 100 + 16 * 100
    for frac in (0.9, 0.7, 0.6, 0.53):
        ranks = _budget_ranks(infos, frac, use_macs=False, multiple=8)
        assert ranks["a"] in (20, 16, 8) and ranks["b"] in (16, 8)
        assert deployable_cost(20, 100, ranks["a"]) + deployable_cost(16, 100, ranks["b"]) <= frac * dense
    # The floor: a and b at rank 8 (no level below it): 8·120 + 8·116 = 1,888 of 3,600 = 0.5244.
    with pytest.raises(ValueError, match=r"lowest rank allowed by `multiple`=8 .* keeps 0\.5244.*lower `multiple`"):
        _budget_ranks(infos, 0.5, use_macs=False, multiple=8)
    # 0.75 (2,700): dense cost 2,000 + 1,600; a's tail block S[16:20] has the least energy per weight,
    # a -> 16 (1,920 + 1,600 = 3,520), then a's S[8:16] (a -> 8: 960 + 1,600 = 2,560 <= 2,700).
    assert _budget_ranks(infos, 0.75, use_macs=False, multiple=8) == {"a": 8, "b": 16}
    # 0.6 (2,160 weights): a -> 16 -> 8 (its blocks are the lowest-energy ones), then b -> 8.
    assert _budget_ranks(infos, 0.6, use_macs=False, multiple=8) == {"a": 8, "b": 8}
    # multiple=1 on the same layers is the old single-value greedy: not multiples of 8.
    r1 = _budget_ranks(infos, 0.6, use_macs=False)
    assert sum(deployable_cost(m, 100, r1[k]) for k, m in (("a", 20), ("b", 16))) <= 0.6 * dense
    assert r1 != {"a": 8, "b": 8}


def test_select_ranks_multiple_rounds_layer_policies_up_and_keeps_budgets():
    model = _model_with_spectra([((20, 24), [float(20 - i) for i in range(20)]),
                                 ((12, 30), [float(12 - i) for i in range(12)])])
    assert lorita.select_ranks(model, lorita.FixedRank(3), multiple=8) == {"0": 8, "1": 8}
    assert lorita.select_ranks(model, lorita.FixedRank(9), multiple=8) == {"0": 16, "1": 12}  # capped at min(m, n)
    plain = lorita.select_ranks(model, lorita.EnergyThreshold(0.9))
    up = lorita.select_ranks(model, lorita.EnergyThreshold(0.9), multiple=4)
    assert all(up[k] >= plain[k] and (up[k] % 4 == 0 or up[k] == m) for k, m in (("0", 20), ("1", 12)))
    ranks = lorita.select_ranks(model, lorita.ParamBudget(0.5), multiple=4)
    assert all(r % 4 == 0 for r in ranks.values())
    cost = deployable_cost(20, 24, ranks["0"]) + deployable_cost(12, 30, ranks["1"])
    assert cost <= 0.5 * (20 * 24 + 12 * 30)


@pytest.mark.parametrize("bad", [0, -8, 2.0, True, "8"])
def test_bad_multiple_is_named(mlp, bad):
    with pytest.raises(ValueError, match="`multiple` must be an int >= 1"):
        lorita.select_ranks(mlp, lorita.FixedRank(2), multiple=bad)


def test_layer_budget_gives_every_layer_the_same_share():
    # (20, 24): m·n/(m+n) = 480/44 = 10.909; (12, 30): 360/42 = 8.571
    model = _model_with_spectra([((20, 24), [float(20 - i) for i in range(20)]),
                                 ((12, 30), [float(12 - i) for i in range(12)])])
    assert lorita.select_ranks(model, lorita.LayerBudget(0.5)) == {"0": 5, "1": 4}  # 5.45, 4.29
    assert lorita.select_ranks(model, lorita.LayerBudget(1.0)) == {"0": 20, "1": 12}  # full rank, dense cost
    assert lorita.select_ranks(model, lorita.LayerBudget(0.05)) == {"0": 1, "1": 1}  # 0.55, 0.43: at least 1
    # rounded down to the multiple (9.82 -> 9 -> 8; 7.71 -> 7 -> 4); below the multiple kept as computed
    assert lorita.select_ranks(model, lorita.LayerBudget(0.9), multiple=4) == {"0": 8, "1": 4}
    assert lorita.select_ranks(model, lorita.LayerBudget(0.5), multiple=8) == {"0": 5, "1": 4}


@pytest.mark.parametrize("m,n", [(512, 512), (10, 512), (64, 576), (16, 144), (3, 7), (768, 3072)])
@pytest.mark.parametrize("f", [0.1, 0.2, 1 / 3, 0.5, 0.9])
def test_layer_budget_rank_is_the_largest_within_the_layer_budget(m, n, f):
    r = lorita.LayerBudget(f)(_info("w", [1.0] * min(m, n), (m, n)))
    assert 1 <= r < min(m, n)
    if r > 1:  # rank 1 is the floor even where it costs more than the share
        assert deployable_cost(m, n, r) <= f * m * n
    assert (r + 1) * (m + n) > f * m * n  # maximal


def test_layer_budget_on_a_conv_uses_the_matricized_shape():
    conv = nn.Sequential(nn.Conv2d(16, 32, 3))  # (32, 16·9 = 144): 4608/176 = 26.18
    assert lorita.select_ranks(conv, lorita.LayerBudget(0.5)) == {"0": 13}
    low = lorita.to_low_rank(conv, {"0": 13})
    x = torch.zeros(1, 16, 8, 8)
    assert lorita.count_macs(low, x).total_macs <= 0.5 * lorita.count_macs(conv, x).total_macs


def test_layer_budget_parses_and_prints():
    assert parse_policy("layer:0.2") == lorita.LayerBudget(0.2)
    assert lorita.ranks.policies.policy_string(lorita.LayerBudget(0.25)) == "layer:0.25"
    with pytest.raises(ValueError, match=r"`fraction` must be in \(0, 1\]"):
        parse_policy("layer:0")

"""LatencyBudget under a fake timer: the chosen ranks meet the measured budget, near it."""

import pytest
import torch
from torch import nn

import lorita
from _fake_timer import FakeTimer, leaf_cost
from lorita.ranks.policies import parse_policy, policy_string


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64))


X = torch.randn(1, 256)


def _fraction(model, ranks, split="latency"):
    deployed = lorita.to_low_rank(model, ranks, split=split, example_inputs=X, timer=FakeTimer())
    return leaf_cost(deployed, (X,)) / leaf_cost(model, (X,))


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_latency_budget_meets_its_budget_under_a_fake_timer(fraction):
    model = _mlp()
    pol = lorita.LatencyBudget(fraction, example_inputs=X, timer=FakeTimer(), steps=8)
    ranks = lorita.select_ranks(model, pol)
    got = _fraction(model, ranks)
    assert got <= fraction
    # bisection lands close below the budget: a MAC fraction 1/2^8 higher would break it or be near
    assert got > fraction - 0.1
    assert set(ranks) == {"0", "2", "4"} and all(1 <= r <= 256 for r in ranks.values())


def test_latency_budget_of_one_keeps_full_ranks_and_parses():
    model = _mlp()
    assert lorita.select_ranks(model, lorita.LatencyBudget(1.0, X, timer=FakeTimer())) == {"0": 256, "2": 256, "4": 64}
    pol = parse_policy("latency:0.5", example_inputs=X)
    assert isinstance(pol, lorita.LatencyBudget) and pol.fraction == 0.5 and policy_string(pol) == "latency:0.5"


def test_latency_budget_bad_input_is_one_clear_line():
    with pytest.raises(ValueError, match=r"`fraction` must be in \(0, 1\], got 1.5"):
        lorita.LatencyBudget(1.5, X)
    with pytest.raises(ValueError, match="LatencyBudget needs `example_inputs`"):
        lorita.LatencyBudget(0.5)
    with pytest.raises(ValueError, match=r"`runtime`='gpu' is not one of"):
        lorita.LatencyBudget(0.5, X, runtime="gpu")
    with pytest.raises(ValueError, match=r"`fraction`=0.01 not met: the fastest model tried"):
        lorita.select_ranks(_mlp(), lorita.LatencyBudget(0.01, X, timer=FakeTimer(), steps=4))


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_latency_budget_with_layer_allocation_meets_its_budget(fraction):
    model = _mlp()
    pol = lorita.LatencyBudget(fraction, example_inputs=X, timer=FakeTimer(), steps=8, allocation="layer")
    ranks = lorita.select_ranks(model, pol)
    got = _fraction(model, ranks)
    assert fraction - 0.1 < got <= fraction
    # the ranks are LayerBudget's at one of the bisection's fractions (k / 2^8 after 8 steps)
    assert any(lorita.select_ranks(model, lorita.LayerBudget(k / 256)) == ranks for k in range(1, 256))
    with pytest.raises(ValueError, match=r"`allocation`='energy' is not one of 'macs', 'layer'"):
        lorita.LatencyBudget(0.5, X, allocation="energy")


@pytest.mark.parametrize("cap", [0.5, 0.25])
def test_latency_budget_with_a_layer_cap_meets_budget_and_cap(cap):
    model = _mlp()
    pol = lorita.LatencyBudget(0.5, example_inputs=X, timer=FakeTimer(), steps=8, layer_cap=cap)
    ranks = lorita.select_ranks(model, pol)
    assert _fraction(model, ranks) <= 0.5  # (the cap alone gives ~0.32 at cap 0.25: the budget then binds less)
    # every layer keeps <= cap of its own cost: r·(m + n) <= cap·m·n (256x256, 256x256, 256->64)
    shapes = {"0": (256, 256), "2": (256, 256), "4": (64, 256)}
    assert all(r * (m + n) <= cap * m * n for name, r in ranks.items() for m, n in [shapes[name]]), ranks
    # the ranks are the capped MacBudget's at one of the bisection's fractions (k / 2^8)
    def capped(f):
        try:
            return lorita.select_ranks(model, lorita.MacBudget(f, X, layer_cap=cap))
        except ValueError:  # below the rank-1 floor
            return None

    assert any(capped(k / 256) == ranks for k in range(1, 257))
    assert ranks != lorita.select_ranks(model, lorita.LatencyBudget(0.5, X, timer=FakeTimer(), steps=8))


def test_latency_budget_cap_of_one_is_uncapped_and_cap_parses():
    model = _mlp()
    plain = lorita.select_ranks(model, lorita.LatencyBudget(0.5, X, timer=FakeTimer(), steps=6))
    assert lorita.select_ranks(model, lorita.LatencyBudget(0.5, X, timer=FakeTimer(), steps=6, layer_cap=1.0)) == plain
    pol = parse_policy("latency:0.5,cap=0.25", example_inputs=X)
    assert (pol.fraction, pol.layer_cap) == (0.5, 0.25) and policy_string(pol) == "latency:0.5,cap=0.25"
    with pytest.raises(ValueError, match=r"`layer_cap` must be in \(0, 1\], got 0"):
        lorita.LatencyBudget(0.5, X, layer_cap=0)
    with pytest.raises(TypeError, match="`layer_cap` must be a number, got nan"):  # the check MacBudget uses
        lorita.LatencyBudget(0.5, X, layer_cap=float("nan"))
    with pytest.raises(ValueError, match=r"`layer_cap` needs allocation='macs'"):
        lorita.LatencyBudget(0.5, X, layer_cap=0.5, allocation="layer")

"""param_groups: the paper's decay-everything default and the alternatives."""

import pytest
import torch
from torch import nn

import lorita


def _model():
    return lorita.factorize(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), depth=2)


def _ids(group):
    return {id(p) for p in group["params"]}


def test_all_decays_everything():
    m = _model()
    groups = lorita.param_groups(m, 1e-3)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-3
    assert _ids(groups[0]) == {id(p) for p in m.parameters()}


def test_weights_and_factors_modes():
    m = _model()
    factors = {id(p) for layer in (m[0], m[2]) for p in layer.factors}
    g = lorita.param_groups(m, 1e-3, decay="factors")
    assert _ids(g[0]) == factors and g[1]["weight_decay"] == 0.0
    g = lorita.param_groups(m, 1e-3, decay="weights")
    assert _ids(g[0]) == factors  # every >=2-dim parameter here is a factor
    assert {id(m[1].weight), id(m[0].bias)} <= _ids(g[1])


def test_frozen_params_are_left_out_and_bad_args_raise():
    m = _model()
    m[1].requires_grad_(False)
    g = lorita.param_groups(m, 0.0)
    assert id(m[1].weight) not in _ids(g[0])
    with pytest.raises(ValueError, match="`weight_decay` must be >= 0"):
        lorita.param_groups(m, -1.0)
    with pytest.raises(ValueError, match="`decay`"):
        lorita.param_groups(m, 1e-3, decay="bias")


def test_weight_decay_shrinks_factors_under_sgd():
    m = _model()
    opt = torch.optim.SGD(lorita.param_groups(m, 0.5, decay="factors"), lr=0.1)
    before = m[0].factors[0].detach().clone()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(m[0].factors[0], before * (1 - 0.1 * 0.5))

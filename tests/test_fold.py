"""BatchNorm folding (issue 9 item 3): exact to float rounding, into dense and low-rank layers."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import lorita
from deploy_fixtures import assert_same_state, state_copy
from lorita.fold import BatchNormFold, fold_batchnorm, plan_batchnorm_folds
from lorita.models import build_model

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _random_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters on every BatchNorm; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BN) and m.track_running_stats:
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


def _rel_err(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return float((ya - yb).abs().max() / ya.abs().max())


def _n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, _BN) for m in model.modules())


class ConvBN(nn.Module):
    def __init__(self, bias: bool, dims: int = 2) -> None:
        super().__init__()
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.conv = conv(3, 8, 3, padding=1, bias=bias)
        self.bn = bn(8)
        self.fc = nn.Linear(8, 6, bias=bias)
        self.bn_fc = nn.BatchNorm1d(6)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.bn_fc(self.fc(h.flatten(2).mean(2)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("low_rank", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fold_is_exact_dense_and_low_rank(bias, dims, low_rank, dtype):
    model = _random_stats(ConvBN(bias, dims)).to(dtype)
    if low_rank:
        model = lorita.to_low_rank(model, {"conv": 3, "fc": 2})
        assert isinstance(model.conv, (lorita.LowRankConv2d, lorita.LowRankConv1d))
    x = torch.randn(4, 3, *([6, 6] if dims == 2 else [10]), dtype=dtype)
    before = state_copy(model)
    folded = fold_batchnorm(model)
    assert _n_bn(folded) == 0 and isinstance(folded.bn, nn.Identity) and isinstance(folded.bn_fc, nn.Identity)
    assert _rel_err(model, folded, x) <= (1e-5 if dtype == torch.float32 else 1e-10)
    assert_same_state(model, before)  # the input model is unchanged
    if low_rank:  # the BN went into the output half; the rank and the first half are as they were
        assert folded.conv.rank == 3 and torch.equal(folded.conv.first.weight, model.conv.first.weight)
        assert folded.conv.second.bias is not None and folded.fc.second.bias is not None
    else:
        assert folded.conv.bias is not None  # created where the conv had none


def test_fold_matches_hand_computed_values():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    bn = nn.BatchNorm2d(2, eps=0.0)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        bn.running_mean.copy_(torch.tensor([1.0, 3.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))
        bn.weight.copy_(torch.tensor([0.5, 2.0]))
        bn.bias.copy_(torch.tensor([1.0, -1.0]))
    folded = fold_batchnorm(nn.Sequential(conv, bn).eval())
    # s = γ/√σ² = (0.25, 4); W' = s·W = (0.5, -4); b' = s·(0 − μ) + β = (0.75, -13)
    assert folded[0].weight.flatten().tolist() == [0.5, -4.0]
    assert folded[0].bias.tolist() == [0.75, -13.0]


def test_resnet20_low_rank_folds_every_bn(caplog):
    model = _random_stats(build_model("resnet20", width=8))
    low = lorita.to_low_rank(model, lorita.select_ranks(model, lorita.RankRatio(0.3)))
    plan = plan_batchnorm_folds(low)
    assert len(plan) == _n_bn(low) == 19 and all(p.folded for p in plan)
    assert plan[0] == BatchNormFold("bn1", "conv1", True, "")
    with caplog.at_level(logging.INFO, logger="lorita.fold"):
        folded = fold_batchnorm(low)
    assert "folded 19 of 19 BatchNorm calls" in caplog.text
    assert _n_bn(folded) == 0 and _n_bn(low) == 19
    assert _rel_err(low, folded, torch.randn(3, 3, 32, 32)) <= 1e-5
    ranks = {n: m.rank for n, m in folded.named_modules() if isinstance(m, lorita.LowRankConv2d)}
    assert ranks == {n: m.rank for n, m in low.named_modules() if isinstance(m, lorita.LowRankConv2d)} and ranks


def test_inplace_changes_the_model_itself():
    model = _random_stats(ConvBN(True))
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        want = model(x)
    out = fold_batchnorm(model, inplace=True)
    assert out is model and _n_bn(model) == 0
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-6)


def test_training_mode_bn_is_refused_with_a_fix():
    model = ConvBN(True).train()
    want = r"^`bn` \(and 1 more\) is a BatchNorm in training mode: .*call model\.eval\(\)"
    with pytest.raises(ValueError, match=want):
        fold_batchnorm(model)


class NotFoldable(nn.Module):
    """BN after an addition, BN whose conv output is also used, BN without running stats."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.bn_sum, self.bn_b = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x):
        h = self.bn_sum(self.a(x) + x[:, :1])
        y = self.b(x)
        return self.bn_c(self.c(h + self.bn_b(y) + y))


def test_unfoldable_bns_stay_and_say_why():
    model = _random_stats(NotFoldable())
    plan = {p.bn: p for p in plan_batchnorm_folds(model)}
    assert not any(p.folded for p in plan.values())
    assert plan["bn_sum"].layer is None and "not the output of a layer" in plan["bn_sum"].reason
    assert plan["bn_b"].reason == "the output of `b` is also used elsewhere"
    assert "no running statistics" in plan["bn_c"].reason
    folded = fold_batchnorm(model)
    assert _n_bn(folded) == 3
    assert _rel_err(model, folded, torch.randn(2, 3, 4, 4)) == 0.0


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.bn_alone = nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.body(x)
        if h.sum() > 0:  # data-dependent control flow: fx cannot trace it
            h = self.bn_alone(h)
        return h


def test_untraceable_model_falls_back_to_sequential_order(caplog):
    model = _random_stats(Untraceable())
    with caplog.at_level(logging.WARNING, logger="lorita.fold"):
        folded = fold_batchnorm(model)
    assert "torch.fx cannot trace Untraceable" in caplog.text
    assert isinstance(folded.body[1], nn.Identity) and isinstance(folded.bn_alone, nn.BatchNorm2d)
    assert _rel_err(model, folded, torch.randn(2, 3, 5, 5)) <= 1e-5


def test_factorized_layer_absorbs_bn_in_its_last_factor():
    model = _random_stats(ConvBN(False)).double()
    fact = lorita.factorize(model, depth=3)
    assert isinstance(fact.conv, lorita.FactorizedConv2d)
    fact.eval()
    folded = fold_batchnorm(fact)
    assert _n_bn(folded) == 0 and folded.conv.depth == 3
    assert _rel_err(fact, folded, torch.randn(2, 3, 5, 5, dtype=torch.float64)) <= 1e-10


def test_not_a_module():
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        fold_batchnorm("resnet20")

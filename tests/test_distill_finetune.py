"""Distillation loss on a hand-made example; fine-tuning keeps ranks and trains the thin factors."""

import math

import pytest
import torch
from torch import nn

import lorita
from lorita.finetune import DistillConfig, FinetuneConfig, distillation_loss, finetune


def test_distillation_loss_hand_computed():
    # student [1, 0], teacher [0, 1], label 0, T = 2, weight 0.5:
    # CE = log(1 + e^-1) = 0.3132616875
    # q = softmax([0.5, 0]) = [s, 1-s], p = softmax([0, 0.5]) = [1-s, s] with s = sigmoid(0.5)
    # KL(p||q) = (2s - 1) * log(s / (1 - s)) = (2s - 1) * 0.5 = 0.1224593312
    # loss = 0.5 * CE + 0.5 * T^2 * KL = 0.5 * 0.3132616875 + 0.5 * 4 * 0.1224593312 = 0.4015495062
    s, t, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    loss = distillation_loss(s, t, y, temperature=2.0, weight=0.5)
    assert float(loss) == pytest.approx(0.4015495062, abs=1e-7)
    sig = 1 / (1 + math.exp(-0.5))
    assert float(distillation_loss(s, t, y, 2.0, 1.0)) == pytest.approx(4 * (2 * sig - 1) * 0.5, abs=1e-7)
    assert float(distillation_loss(s, t, y, 2.0, 0.0)) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-7)
    # the teacher gets no gradient; the student does
    s.requires_grad_(True)
    t.requires_grad_(True)
    distillation_loss(s, t, y, 2.0, 0.5).backward()
    assert t.grad is None and s.grad is not None and float(s.grad.abs().sum()) > 0


def test_distillation_matches_teacher_at_zero_loss_of_soft_term():
    logits = torch.randn(5, 7)
    y = torch.randint(0, 7, (5,))
    # identical logits: KL = 0, so weight 1 gives exactly 0
    assert float(distillation_loss(logits, logits.clone(), y, 3.0, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_distill_config_errors():
    with pytest.raises(ValueError, match="`temperature` must be a number > 0"):
        DistillConfig(temperature=0)
    with pytest.raises(ValueError, match=r"`weight` must be in \[0, 1\]"):
        DistillConfig(weight=1.5)
    with pytest.raises(ValueError, match="differ; the teacher must predict the same classes"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_finetune_keeps_ranks_trains_thin_factors_and_leaves_rng_alone():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))
    low = lorita.to_low_rank(dense, {"0": 3})
    x, y = torch.randn(64, 20), torch.randint(0, 4, (64,))
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    first_before = low[0].first.weight.clone()
    loss0 = nn.functional.cross_entropy(low(x), y).item()
    state = torch.random.get_rng_state()
    out = finetune(
        low, batches, FinetuneConfig(epochs=5, lr=1e-2, distill=DistillConfig(2.0, 0.3)), teacher=dense
    )
    assert torch.equal(state, torch.random.get_rng_state())  # forked RNG: caller's state untouched
    assert out["batches"] == 20
    assert isinstance(low[0], lorita.LowRankLinear) and low[0].first.weight.shape == (3, 20)
    assert not torch.equal(first_before, low[0].first.weight)
    assert nn.functional.cross_entropy(low(x), y).item() < loss0


def test_finetune_errors():
    m = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="no `teacher` was given"):
        finetune(
            m,
            [(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))],
            FinetuneConfig(distill=DistillConfig()),
        )
    with pytest.raises(ValueError, match="yielded no batches"):
        finetune(m, [], FinetuneConfig())
    with pytest.raises(ValueError, match="`when` must be one of"):
        FinetuneConfig(when="always")
    with pytest.raises(ValueError, match="`epochs` must be an int >= 1"):
        FinetuneConfig(epochs=0)

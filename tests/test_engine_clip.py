"""Gradient-norm clipping in engine.train_one_epoch."""

import pytest
import torch
from torch import nn

from lorita.engine import train_one_epoch


def _one_step(clip: float, stats: dict | None = None) -> float:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = torch.cat([p.detach().clone().reshape(-1) for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0)
    x, y = torch.randn(8, 4) * 100, torch.randint(0, 3, (8,))
    out = train_one_epoch(model, [(x, y)], opt, progress=False, clip_grad_norm=clip)
    if stats is not None:
        stats.update(out)
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return float((after - before).norm())


def test_clip_bounds_the_step_norm():
    # SGD lr 1, no momentum: the update is the (clipped) gradient, so its norm is the clip value
    assert _one_step(1e-3) == pytest.approx(1e-3, rel=1e-4)
    assert _one_step(0.0) > 1.0  # off: the raw gradient of inputs scaled by 100


def test_clipped_fraction_counts_the_steps_the_guard_bound():
    tight, loose, off = {}, {}, {}
    _one_step(1e-3, tight), _one_step(1e9, loose), _one_step(0.0, off)
    assert tight["clipped"] == 1.0 and loose["clipped"] == 0.0
    assert "clipped" not in off  # no guard, no statistic


def test_negative_clip_is_refused():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="`clip_grad_norm`"):
        train_one_epoch(model, [(torch.randn(2, 2), torch.tensor([0, 1]))], opt, progress=False, clip_grad_norm=-1)

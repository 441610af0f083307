"""Shared fixtures: tiny models (MLP, CNN with BatchNorm), seeds, the bundled MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / "data" / "mnist"


class TinyMLP(nn.Module):
    def __init__(self, sizes=(12, 16, 8, 5)):
        super().__init__()
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.net(x)


class TinyCNN(nn.Module):
    """Conv-BN-ReLU x2 (one strided, one dilated, one bias-free) then a Linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2)
        self.bn2 = nn.BatchNorm2d(12)
        self.head = nn.Linear(12 * 4 * 4, 6)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.flatten(1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def mlp():
    return TinyMLP()


@pytest.fixture
def cnn():
    m = TinyCNN()
    # Non-trivial BN statistics so merge tests exercise them.
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m


@pytest.fixture(scope="session")
def mnist():
    from lorita.data import load_mnist

    return load_mnist(MNIST_DIR)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The suite's tensors are tiny: one intra-op thread is as fast on a quiet machine and up to
    30× faster on a busy shared one (OpenMP workers spin-wait for cores that other jobs hold)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

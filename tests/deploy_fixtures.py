"""Shared helpers for the deployment tests (save/load, export, layer kinds, DDP, bad input).

Import the fixtures into a test module with ``from deploy_fixtures import ...``; kept out of
``conftest.py`` so the core test suite's fixtures stay separate.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (MNIST's format)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fake_mnist(root: Path, n_train: int = 160, n_test: int = 40, seed: int = 0) -> Path:
    """Four tiny MNIST-format files (random 28×28 images, labels 0..9) in ``root``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n_train) % 10
    write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(root / "train-labels-idx1-ubyte.gz", labels)
    write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
    return root


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_mnist(tmp_path_factory.mktemp("mnist"))


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``lorita train`` on the fake data: FCN 784-16-10, depth 2, one epoch of 4 batches."""
    return ["--no-progress", "train", "--data-dir", str(data), "--out", str(out), "--depth", "2",
            "--model-kwargs", '{"hidden": [16]}', "--no-verify", "--val-size", "40", "--epochs", "1",
            "--batch-size", "40", "--lr", "0.05", *extra]


@pytest.fixture(scope="module")
def trained_run(fake_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished `lorita train` folder (config.json, model.safetensors, ...)."""
    from lorita.cli import main

    out = tmp_path_factory.mktemp("run")
    assert main(train_args(fake_mnist, out)) == 0
    return out


@pytest.fixture(scope="module")
def compressed_run(trained_run: Path, fake_mnist: Path) -> Path:
    """`lorita compress RUN --policy rank:4` output folder."""
    from lorita.cli import main

    out = trained_run / "compressed"
    assert main(["compress", str(trained_run), "--policy", "rank:4", "--out", str(out),
                 "--data-dir", str(fake_mnist)]) == 0
    return out


class TinyNet(nn.Module):
    """Linear + Conv2d + Conv1d + MultiheadAttention, in → (B, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.conv1d = nn.Conv1d(6, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, 2, 4, 4)
        h = torch.relu(self.conv(x)).flatten(2)  # (B, 6, 16)
        h = torch.relu(self.conv1d(h)).transpose(1, 2)  # (B, 16, 8)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.fc(a.mean(1))


def tiny_input(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """``model``'s state_dict has exactly the keys and values of ``before``."""
    now = model.state_dict()
    assert set(now) == set(before)
    for k, v in before.items():
        assert torch.equal(now[k], v), k

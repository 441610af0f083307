"""The dataset registry: ``DATASETS`` (name → reader) and :func:`load_dataset`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lorita.data.cifar10 import load_cifar10
from lorita.data.mnist import load_mnist
from lorita.data.splits import DataSplits

__all__ = ["DATASETS", "load_dataset"]

DATASETS: dict[str, Callable[..., DataSplits]] = {"mnist": load_mnist, "cifar10": load_cifar10}


def load_dataset(name: str, root: str | Path, **kwargs) -> DataSplits:
    """Load a dataset by name (``"mnist"``, ``"cifar10"``).

    Raises:
        ValueError: unknown name.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](root, **kwargs)


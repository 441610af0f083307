"""Datasets: the registry (``load_dataset``, ``DATASETS``) over the readers, and the in-memory
splits and loader they produce.

``from lorita.data import TensorLoader, load_mnist, make_transform, DataSplits, load_dataset``
keeps working.
"""

from __future__ import annotations

from lorita.data.cifar10 import load_cifar10
from lorita.data.mnist import MNIST_SHA256, load_mnist, read_idx
from lorita.data.registry import DATASETS, load_dataset
from lorita.data.splits import (
    AUGMENTATIONS,
    DataSplits,
    TensorLoader,
    make_transform,
    random_crop_flip,
    split_train_val,
)

__all__ = [
    "DataSplits",
    "TensorLoader",
    "load_mnist",
    "load_cifar10",
    "load_dataset",
    "read_idx",
    "split_train_val",
    "MNIST_SHA256",
    "DATASETS",
    "AUGMENTATIONS",
    "make_transform",
    "random_crop_flip",
]

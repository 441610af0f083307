"""Datasets as in-memory tensors, a fixed validation split, and a fast seeded batch loader.

The test split is for final reports only: every choice (checkpoint, rank, stopping) is made on
the validation split, carved with a fixed seed from the training set (the official LoRITa code
selects on the test set; we do not, paper-notes §11). The readers (:mod:`lorita.data.mnist`,
:mod:`lorita.data.cifar10`) build :class:`DataSplits`; this module imports no reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "DataSplits",
    "TensorLoader",
    "split_train_val",
    "AUGMENTATIONS",
    "make_transform",
    "random_crop_flip",
]


@dataclass
class DataSplits:
    """Train/validation/test tensors of one dataset.

    Images are ``uint8`` ``(N, C, H, W)``; labels ``int64`` ``(N,)``. ``mean``/``std`` are the
    per-channel normalization constants (in [0, 1] units) applied by the loaders.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def normalize(self, x: Tensor) -> Tensor:
        """``uint8 (B, C, H, W)`` → float32 normalized."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std


def split_train_val(n: int, val_size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Fixed, seeded split of ``range(n)`` into (train indices, validation indices).

    Raises:
        ValueError: ``val_size`` outside ``[0, n)``.
    """
    if not 0 <= val_size < n:
        raise ValueError(f"`val_size` must be in [0, {n}), got {val_size}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    return perm[val_size:].sort().values, perm[:val_size].sort().values



class TensorLoader:
    """Seeded mini-batch iterator over in-memory tensors (a fast stand-in for ``DataLoader``).

    Each epoch draws a fresh permutation from a generator seeded with ``seed + epoch`` (so runs
    are reproducible and resumable). With ``world_size > 1`` each rank gets an equal, disjoint
    shard of every epoch's permutation (as ``DistributedSampler``). ``transform(x_uint8, gen)``
    maps a uint8 batch to the float model input (normalization, augmentation).

    Yields ``(x, y)`` with ``x`` the transformed batch and ``y`` int64 labels.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be in [0, {world_size}), got {rank}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.transform = transform
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if self.world_size > 1:
            per = n // self.world_size
            idx = idx[self.rank * per : (self.rank + 1) * per]
        return idx

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self._indices()
        g = torch.Generator().manual_seed(10_007 * (self.seed + 1) + self.epoch)
        for start in range(0, len(idx), self.batch_size):
            b = idx[start : start + self.batch_size]
            if self.drop_last and len(b) < self.batch_size:
                break
            xb = self.x[b]
            if self.transform is not None:
                xb = self.transform(xb, g)
            yield xb, self.y[b]


def random_crop_flip(x: Tensor, g: torch.Generator, pad: int = 4) -> Tensor:
    """Batched training augmentation: random ``pad``-pixel-padded crop and horizontal flip.

    Args:
        x: ``(B, C, H, W)`` batch (any dtype). g: generator for the random draws.

    Returns:
        A tensor of the same shape and dtype (zero padding, as torchvision's RandomCrop).
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    # Random draws on the generator's device (CPU); one gather on the flattened padded images.
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    cols = torch.arange(w)[None, :].expand(b, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # flip = read columns backwards
    rows = dy[:, None] + torch.arange(h)[None, :]
    idx = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).reshape(b, 1, h * w)
    idx = idx.expand(b, c, h * w).to(x.device)
    return padded.reshape(b, c, -1).gather(2, idx).reshape(b, c, h, w)


# Training augmentation per dataset (none for digits: flips change their meaning).
AUGMENTATIONS: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {"cifar10": random_crop_flip}


def make_transform(data: DataSplits, train: bool, augment: bool) -> Callable[[Tensor, torch.Generator], Tensor]:
    """uint8 batch → normalized float batch, with the dataset's augmentation when ``augment``.

    Raises:
        ValueError: ``augment`` for a dataset that defines no augmentation.
    """
    aug = AUGMENTATIONS.get(data.name)
    if augment and aug is None:
        raise ValueError(f"no training augmentation is defined for {data.name!r}; drop `augment=True`")

    def transform(x: Tensor, g: torch.Generator) -> Tensor:
        if train and augment:
            x = aug(x, g)
        return data.normalize(x)

    return transform

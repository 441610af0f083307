"""Datasets as in-memory tensors, a fixed validation split, and a fast seeded batch loader.

The test split is for final reports only: every choice (checkpoint, rank, stopping) is made on
the validation split, carved with a fixed seed from the training set (the official LoRITa code
selects on the test set; we do not, paper-notes §11).

MNIST: the four standard IDX files (``*.gz`` or uncompressed) in one folder; each file's
decompressed SHA-256 is checked against the official sums unless ``verify=False``.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DataSplits",
    "TensorLoader",
    "load_mnist",
    "load_dataset",
    "read_idx",
    "split_train_val",
    "MNIST_SHA256",
    "DATASETS",
    "AUGMENTATIONS",
    "make_transform",
    "random_crop_flip",
]

logger = logging.getLogger(__name__)

# SHA-256 of the decompressed official MNIST files (yann.lecun.com), also pinned by torchvision users.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(f"cannot read {path}: {exc}. Replace the file with an intact copy.") from None


def read_idx(path: str | Path, expected_sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array.

    Args:
        path: file path.
        expected_sha256: if given, the SHA-256 the *decompressed* bytes must have.

    Raises:
        FileNotFoundError: missing file. ValueError: corrupt header/size or checksum mismatch
            (the message names the file, the expected sum and what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {path}")
    data = _read_bytes(path)
    if expected_sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != expected_sha256:
            raise ValueError(
                f"{path}: SHA-256 of the decompressed data is {got}, expected {expected_sha256}. "
                f"The file is corrupt or not the official one: restore it (git checkout data/) or "
                f"pass verify=False / --no-verify for other IDX data."
            )
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = [int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4)]
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expect = header + math.prod(dims) * dtype.itemsize
    if len(data) != expect:
        raise ValueError(f"{path}: size {len(data)} bytes does not match its header {dims} ({expect} bytes)")
    return np.frombuffer(data, dtype, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for cand in (root / (stem + ".gz"), root / stem):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"missing MNIST file {root / (stem + '.gz')} (or uncompressed {stem}). Point --data-dir at a "
        f"folder holding the four standard IDX files; the repository ships them in data/mnist/."
    )


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


def load_mnist(
    root: str | Path, val_size: int = 5000, split_seed: int = 0, verify: bool = True
) -> DataSplits:
    """MNIST from the four IDX files in ``root``.

    Args:
        root: folder with ``train-images-idx3-ubyte[.gz]`` etc.
        val_size: images carved from the 60,000 training images for validation (seeded, fixed).
        split_seed: seed of that split (keep it fixed across runs that are compared).
        verify: check the official SHA-256 of every decompressed file.

    Returns:
        :class:`DataSplits`: train ``(60000 − val_size, 1, 28, 28)``, val, test ``(10000, 1, 28, 28)``.

    Raises:
        FileNotFoundError / ValueError: missing, corrupt or mismatched files (named).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"MNIST folder {root} does not exist; pass --data-dir pointing at the four IDX files "
            f"(the repository ships them in data/mnist/)"
        )
    arrays = {}
    for stem, sha in MNIST_SHA256.items():
        arrays[stem] = read_idx(_find(root, stem), sha if verify else None)
    tx, ty = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    sx, sy = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    for img, lab, what in ((tx, ty, "train"), (sx, sy, "test")):
        if img.ndim != 3 or lab.ndim != 1 or img.shape[0] != lab.shape[0]:
            raise ValueError(
                f"{root}: {what} images {img.shape} and labels {lab.shape} do not form an MNIST-style split"
            )
    x = torch.from_numpy(np.array(tx)).unsqueeze(1)
    y = torch.from_numpy(ty.astype(np.int64))
    tr, va = split_train_val(x.shape[0], val_size, split_seed)
    num_classes = int(max(ty.max(), sy.max())) + 1
    return DataSplits(
        "mnist",
        x[tr], y[tr], x[va], y[va],
        torch.from_numpy(np.array(sx)).unsqueeze(1),
        torch.from_numpy(sy.astype(np.int64)),
        num_classes, MNIST_MEAN, MNIST_STD,
        meta={"root": str(root), "val_size": val_size, "split_seed": split_seed, "verified": verify},
    )


def _load_cifar10(root: str | Path, **kwargs) -> DataSplits:
    """CIFAR-10 (binary or python version); see :func:`lorita.cifar.load_cifar10`."""
    from lorita.cifar import load_cifar10  # lorita.cifar imports DataSplits from this module

    return load_cifar10(root, **kwargs)


DATASETS: dict[str, Callable[..., DataSplits]] = {"mnist": load_mnist, "cifar10": _load_cifar10}


def load_dataset(name: str, root: str | Path, **kwargs) -> DataSplits:
    """Load a dataset by name (``"mnist"``, ``"cifar10"``).

    Raises:
        ValueError: unknown name.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](root, **kwargs)


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
        raise ValueError(f"no training augmentation is defined for {data.name!r}; drop --augment")

    def transform(x: Tensor, g: torch.Generator) -> Tensor:
        if train and augment:
            x = aug(x, g)
        return data.normalize(x)

    return transform

"""MNIST: the four standard IDX files (``*.gz`` or uncompressed) in one folder; each file's
decompressed SHA-256 is checked against the official sums unless ``verify=False``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
from pathlib import Path

import numpy as np
import torch

from lorita.data.splits import DataSplits, split_train_val

__all__ = ["MNIST_SHA256", "load_mnist", "read_idx"]

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
                f"pass `verify=False` for other IDX data."
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
        f"missing MNIST file {root / (stem + '.gz')} (or uncompressed {stem}). Point `data_dir` at a "
        f"folder holding the four standard IDX files; the repository ships them in data/mnist/."
    )




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
            f"MNIST folder {root} does not exist; pass `data_dir` pointing at the four IDX files "
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



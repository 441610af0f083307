"""Tiny CIFAR-10 folders in both official layouts, for tests (not a test module)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

N_TRAIN_FILE, N_TEST = 6, 8  # records per tiny train file (5 files) and in the tiny test file


def _images(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(offset)
    x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    y = (np.arange(n) + offset) % 10
    return x, y.astype(np.int64)


def _all_tiny() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts = {f"data_batch_{i}": _images(N_TRAIN_FILE, 100 * i) for i in range(1, 6)}
    parts["test_batch"] = _images(N_TEST, 999)
    return parts


def write_bin(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny CIFAR-10 binary version: 5×6 train records, 8 test records, meta file."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = _all_tiny()
    for name, (x, y) in parts.items():
        rec = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(x), -1)], axis=1)
        (folder / f"{name}.bin").write_bytes(rec.tobytes())
    (folder / "batches.meta.txt").write_text(
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"
    )
    return parts


def write_py(folder: Path, protocol: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny CIFAR-10 python version (pickled dicts with bytes keys, as the official files)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = _all_tiny()
    for name, (x, y) in parts.items():
        d = {b"batch_label": name.encode(), b"labels": [int(v) for v in y],
             b"data": x.reshape(len(x), -1), b"filenames": [f"{i}.png".encode() for i in range(len(y))]}
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}, protocol=2))
    return parts

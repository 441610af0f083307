"""Bundled MNIST: checksums, counts, the fixed validation split, clear errors; the batch loader."""

import gzip
import shutil

import pytest
import torch

from conftest import MNIST_DIR
from lorita.data import TensorLoader, load_mnist, read_idx, split_train_val


def test_bundled_mnist_loads_with_checksums_and_fixed_split(mnist):
    assert mnist.train_x.shape == (55_000, 1, 28, 28) and mnist.train_x.dtype == torch.uint8
    assert mnist.val_x.shape == (5_000, 1, 28, 28)
    assert mnist.test_x.shape == (10_000, 1, 28, 28)
    assert mnist.num_classes == 10 and mnist.meta["verified"]
    # Official per-class test counts (shared/data/README.md).
    counts = torch.bincount(mnist.test_y, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Train + val are the 60,000 training labels, per-class counts preserved.
    all_y = torch.cat([mnist.train_y, mnist.val_y])
    assert torch.bincount(all_y, minlength=10).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_split_is_fixed_disjoint_and_seeded():
    tr, va = split_train_val(100, 10, seed=0)
    tr2, va2 = split_train_val(100, 10, seed=0)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 100
    _, va3 = split_train_val(100, 10, seed=1)
    assert not torch.equal(va, va3)
    with pytest.raises(ValueError, match="`val_size` must be in"):
        split_train_val(10, 10)


def test_missing_file_error_names_file_and_fix(tmp_path):
    for f in MNIST_DIR.glob("*.gz"):
        if "t10k-labels" not in f.name:
            shutil.copy(f, tmp_path / f.name)
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz.*`data_dir`"):
        load_mnist(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass `data_dir`"):
        load_mnist(tmp_path / "nope")


def test_corrupt_file_names_file_and_expected_checksum(tmp_path):
    for f in MNIST_DIR.glob("*.gz"):
        shutil.copy(f, tmp_path / f.name)
    raw = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    bad = bytearray(raw)
    bad[100] ^= 1
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(bad)))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: SHA-256 .* expected ff7bcfd4"):
        load_mnist(tmp_path)
    # Truncated gzip stream: still one clear error naming the file.
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()[:500])
    with pytest.raises(ValueError, match=r"cannot read .*t10k-labels-idx1-ubyte\.gz"):
        load_mnist(tmp_path)


def test_uncompressed_idx_and_header_checks(tmp_path):
    raw = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "labels").write_bytes(raw)
    arr = read_idx(tmp_path / "labels")
    assert arr.shape == (10_000,) and int(arr[0]) == 7
    (tmp_path / "short").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="does not match its header"):
        read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78" + raw[4:])
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_loader_is_deterministic_per_epoch_and_shards():
    x = torch.arange(10).view(10, 1)
    y = torch.arange(10)
    a = TensorLoader(x, y, 4, shuffle=True, seed=3)
    b = TensorLoader(x, y, 4, shuffle=True, seed=3)
    ea = [yb.tolist() for _, yb in a]
    assert ea == [yb.tolist() for _, yb in b] and len(a) == 3
    a.set_epoch(1)
    assert [yb.tolist() for _, yb in a] != ea
    assert sorted(sum(ea, [])) == list(range(10))
    r0 = TensorLoader(x, y, 10, shuffle=True, seed=3, rank=0, world_size=2)
    r1 = TensorLoader(x, y, 10, shuffle=True, seed=3, rank=1, world_size=2)
    s0, s1 = next(iter(r0))[1].tolist(), next(iter(r1))[1].tolist()
    assert len(s0) == len(s1) == 5 and not set(s0) & set(s1)

"""CIFAR-10 loading (binary + python versions, restricted unpickler), split, augmentation."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from _cifar_files import N_TEST, write_bin, write_py  # tests/ is on sys.path under pytest
from lorita.data import AUGMENTATIONS, load_dataset, make_transform, random_crop_flip
from lorita.data.cifar10 import (
    RECORD_BYTES,
    channel_stats,
    load_cifar10,
    read_cifar_bin,
    read_cifar_py,
    safe_unpickle,
)

# the opt-in real-data test: LORITA_CIFAR10_DIR, else a `shared/data` folder beside the checkout
REAL = Path(
    os.environ.get("LORITA_CIFAR10_DIR")
    or Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cifar-10-batches-bin"
)


def _expected(parts):
    tx = np.concatenate([parts[f"data_batch_{i}"][0] for i in range(1, 6)])
    ty = np.concatenate([parts[f"data_batch_{i}"][1] for i in range(1, 6)])
    return tx, ty, parts["test_batch"][0], parts["test_batch"][1]


@pytest.mark.parametrize("layout", ["bin", "py2", "py5"])
def test_both_layouts_round_trip(tmp_path, layout):
    folder = tmp_path / "cifar"
    parts = write_bin(folder) if layout == "bin" else write_py(folder, protocol=int(layout[2]))
    d = load_cifar10(folder, val_size=7, split_seed=3, verify=False)
    tx, ty, sx, sy = _expected(parts)
    # Train + val together are exactly the 30 training images, split by the documented seeded rule.
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(3))
    va, tr = perm[:7].sort().values, perm[7:].sort().values
    assert torch.equal(d.train_x, torch.from_numpy(tx)[tr])
    assert torch.equal(d.train_y, torch.from_numpy(ty)[tr])
    assert torch.equal(d.val_x, torch.from_numpy(tx)[va]) and torch.equal(d.val_y, torch.from_numpy(ty)[va])
    assert torch.equal(d.test_x, torch.from_numpy(sx)) and torch.equal(d.test_y, torch.from_numpy(sy))
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.name == "cifar10" and d.num_classes == 10 and d.input_shape == (3, 32, 32)
    assert d.meta["layout"] == ("bin" if layout == "bin" else "py")
    # Normalization constants: the per-channel statistics of the remaining training images.
    ref = tx[tr.numpy()].astype(np.float64) / 255.0
    np.testing.assert_allclose(d.mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(d.std, ref.std(axis=(0, 2, 3)), rtol=1e-9)


def test_parent_folder_and_registry(tmp_path):
    write_bin(tmp_path / "cifar-10-batches-bin")
    d = load_dataset("cifar10", tmp_path, val_size=5, verify=False)  # the parent folder works too
    assert len(d.train_y) == 25 and len(d.val_y) == 5 and len(d.test_y) == N_TEST


def test_verify_requires_official_counts(tmp_path):
    write_bin(tmp_path)
    with pytest.raises(ValueError, match=r"data_batch_1\.bin: 6 records, the official files hold 10,000"):
        load_cifar10(tmp_path, val_size=5, verify=True)


def test_truncated_binary_names_file(tmp_path):
    write_bin(tmp_path)
    f = tmp_path / "data_batch_3.bin"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(ValueError, match=rf"data_batch_3\.bin: size {6 * RECORD_BYTES - 5:,} bytes is not"):
        load_cifar10(tmp_path, val_size=5, verify=False)


def test_bad_label_names_record(tmp_path):
    write_bin(tmp_path)
    f = tmp_path / "test_batch.bin"
    raw = bytearray(f.read_bytes())
    raw[2 * RECORD_BYTES] = 17  # label byte of record 2
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"test_batch\.bin: record 2 has label 17"):
        read_cifar_bin(f, verify=False)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 files"):
        load_cifar10(tmp_path)
    write_bin(tmp_path)
    (tmp_path / "data_batch_4.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_4\.bin"):
        load_cifar10(tmp_path, val_size=5, verify=False)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    write_py(tmp_path)
    payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil(marker)}
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_1: refused global (posix|os|nt)\.system"):
        load_cifar10(tmp_path, val_size=5, verify=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj, what",
    [(Path("x"), "pathlib"), (torch.zeros(2), "torch"), (np.zeros(2, dtype=np.float32), "not uint8")],
)
def test_unpickler_refuses_classes_and_other_dtypes(obj, what):
    with pytest.raises(ValueError, match=what):
        safe_unpickle(pickle.dumps({"a": obj}, protocol=2), "f.pkl")


def test_unpickler_accepts_plain_data():
    obj = {b"k": [1, 2.5, "s", b"b", (None, True)], "n": {"x": -3}}
    assert safe_unpickle(pickle.dumps(obj, protocol=2)) == obj
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    got = safe_unpickle(pickle.dumps(arr, protocol=2))
    assert got.dtype == np.uint8 and np.array_equal(got, arr)


def test_python_batch_shape_errors(tmp_path):
    f = tmp_path / "data_batch_1"
    f.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_1: 'data' has shape \(2, 100\)"):
        read_cifar_py(f, verify=False)
    f.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        read_cifar_py(f, verify=False)
    f.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="data_batch_1"):
        read_cifar_py(f, verify=False)


def _crop_flip_reference(x: torch.Tensor, dy, dx, flip, pad: int = 4) -> torch.Tensor:
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    out = []
    for i in range(len(x)):
        c = padded[i, :, dy[i] : dy[i] + x.shape[2], dx[i] : dx[i] + x.shape[3]]
        out.append(c.flip(-1) if flip[i] else c)
    return torch.stack(out)


def test_random_crop_flip_matches_loop_reference():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(5)
    out = random_crop_flip(x, g)
    # Replay the same draws (dy, dx, flip in that order) for the loop reference.
    r = torch.Generator().manual_seed(5)
    dy = torch.randint(0, 9, (16,), generator=r)
    dx = torch.randint(0, 9, (16,), generator=r)
    flip = torch.rand(16, generator=r) < 0.5
    assert 0 < int(flip.sum()) < 16  # both branches exercised
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, _crop_flip_reference(x, dy.tolist(), dx.tolist(), flip.tolist()))


def test_cifar_transform_normalizes_and_augments(tmp_path):
    write_bin(tmp_path)
    d = load_cifar10(tmp_path, val_size=5, verify=False)
    assert AUGMENTATIONS["cifar10"] is random_crop_flip
    ev = make_transform(d, train=False, augment=False)
    x = d.train_x[:4]
    got = ev(x, torch.Generator())
    mean = torch.tensor(d.mean).view(1, 3, 1, 1)
    std = torch.tensor(d.std).view(1, 3, 1, 1)
    torch.testing.assert_close(got, (x.float() / 255 - mean.float()) / std.float())
    tr = make_transform(d, train=True, augment=True)
    a = tr(x, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, 32, 32) and not torch.equal(a, got)


def test_channel_stats_histogram_equals_direct():
    x = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8)
    mean, std = channel_stats(x)
    ref = x.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), ref.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), ref.std(dim=(0, 2, 3), unbiased=False))


@pytest.mark.skipif(not REAL.is_dir(), reason="real CIFAR-10 copy not present (set LORITA_CIFAR10_DIR)")
def test_real_cifar10_copy():
    d = load_cifar10(REAL, val_size=5000, split_seed=0, verify=True)
    assert d.train_x.shape == (45000, 3, 32, 32) and d.val_x.shape == (5000, 3, 32, 32)
    assert d.test_x.shape == (10000, 3, 32, 32)
    assert torch.equal(d.test_y.bincount(), torch.full((10,), 1000))
    assert torch.equal((torch.cat([d.train_y, d.val_y])).bincount(), torch.full((10,), 5000))
    # The copy's README: train mean (0.4913, 0.4821, 0.4465), std (0.2452, 0.2428, 0.2606) over all
    # 50,000 images; our statistics exclude the 5,000 validation images.
    np.testing.assert_allclose(d.mean, (0.4913, 0.4821, 0.4465), atol=2e-3)
    np.testing.assert_allclose(d.std, (0.2452, 0.2428, 0.2606), atol=2e-3)


def test_unpickler_guards_array_stand_ins():
    # An int8 array ("b") is not uint8; a buffer given as an int must not allocate.
    with pytest.raises(ValueError, match="not uint8"):
        safe_unpickle(pickle.dumps(np.zeros(3, dtype=np.int8), protocol=2))
    # _frombuffer(2**30, None, None, "C"): bytes(2**30) would allocate a GiB.
    evil = b"\x80\x05cnumpy._core.numeric\n_frombuffer\n(J\x00\x00\x00\x40NN\x8c\x01CtR."
    with pytest.raises(ValueError, match="array buffer is int"):
        safe_unpickle(evil)
    assert safe_unpickle(pickle.dumps({1, 2}, protocol=4)) == {1, 2}

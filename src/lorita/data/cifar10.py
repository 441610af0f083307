"""CIFAR-10 from either official on-disk layout, with a seeded validation split.

* **Binary version** (``cifar-10-batches-bin``): ``data_batch_1.bin`` … ``data_batch_5.bin`` and
  ``test_batch.bin``, each a run of 3,073-byte records (1 label byte 0–9, then 1,024 red, 1,024
  green and 1,024 blue bytes of a 32×32 image, row-major), plus ``batches.meta.txt`` (class
  names, one a line).
* **Python version** (``cifar-10-batches-py``): ``data_batch_1`` … ``data_batch_5`` and
  ``test_batch``, each a pickled dict with ``data`` (a ``(N, 3072)`` uint8 numpy array) and
  ``labels`` (a list of ints), plus ``batches.meta``. They are read with a **restricted
  unpickler** (:func:`safe_unpickle`): only plain containers, bytes, strings and numbers are
  accepted, and the three numpy names a pickled ``uint8`` array needs are mapped to inert
  stand-ins that only record shape, dtype and raw bytes (plus ``_codecs.encode`` for latin-1, how
  Python 3 writes ``bytes`` at protocol 2). Any other global (a class, a function
  such as ``os.system``) is refused before anything runs, so a hostile file cannot execute code.

Every file is checked (record size, label range, shape, and with ``verify=True`` the official
10,000 records per file); errors name the file, what is wrong and what to do.

The test split is for final reports only; the validation split (default 5,000 images) is carved
from the 50,000 training images with a fixed seed (same rule as MNIST, paper-notes §11).
Normalization constants are the per-channel mean/std of the training images that remain after
the validation split (computed here, so a lossy or different copy gets its own statistics).
"""

from __future__ import annotations

import io
import logging
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorita.data.splits import DataSplits, split_train_val

__all__ = [
    "load_cifar10",
    "read_cifar_bin",
    "read_cifar_py",
    "safe_unpickle",
    "channel_stats",
    "CIFAR10_CLASSES",
    "RECORD_BYTES",
]

logger = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES
OFFICIAL_RECORDS = 10_000
_TRAIN_BIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_TEST_BIN = "test_batch.bin"
_TRAIN_PY = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_PY = "test_batch"


# -- binary version ---------------------------------------------------------------------------
def read_cifar_bin(
    path: str | Path, verify: bool = True, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of the CIFAR-10 binary version.

    Args:
        path: a ``*.bin`` file of 3,073-byte records.
        verify: require the official 10,000 records per file.
        num_classes: labels must lie in ``[0, num_classes)``.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.

    Raises:
        FileNotFoundError: missing file. ValueError: size not a positive multiple of 3,073 bytes,
            a label out of range (the first bad record is named), or (``verify``) a record count
            other than 10,000.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"missing CIFAR-10 file {path}. Point `data_dir` at the extracted cifar-10-batches-bin "
            f"folder (data_batch_1.bin … data_batch_5.bin, test_batch.bin)."
        )
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(
            f"{path}: size {raw.size:,} bytes is not a positive multiple of the {RECORD_BYTES}-byte CIFAR-10 "
            f"record (1 label + 3,072 pixels); the file is truncated or not a CIFAR-10 binary batch. "
            f"Replace it with an intact copy."
        )
    rec = raw.reshape(-1, RECORD_BYTES)
    if verify and len(rec) != OFFICIAL_RECORDS:
        raise ValueError(
            f"{path}: {len(rec):,} records, the official files hold {OFFICIAL_RECORDS:,}; pass verify=False "
            f"(`verify=False`) to read a partial or custom copy."
        )
    labels = rec[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{path}: record {i} has label {int(labels[i])}, outside 0..{num_classes - 1} "
            f"({bad.size} bad records); the file is corrupt. Replace it with an intact copy."
        )
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


# -- python version: a restricted unpickler ---------------------------------------------------
class _DtypeStub:
    """Stand-in for ``numpy.dtype(spec, align, copy)``: records the spec and byte order only."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        self.spec = spec.decode("latin1") if isinstance(spec, bytes) else spec
        self.order = "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], str | bytes):
            self.order = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]


class _ArrayStub:
    """Stand-in for ``numpy.core.multiarray._reconstruct(ndarray, shape, typecode)``."""

    def __init__(self, *args: Any) -> None:
        self.shape: Any = None
        self.dtype: Any = None
        self.raw: Any = None

    def __setstate__(self, state: Any) -> None:
        # numpy's ndarray state: (version, shape, dtype, is_fortran, raw bytes).
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("malformed ndarray state")
        _, self.shape, self.dtype, fortran, self.raw = state
        if fortran:
            raise pickle.UnpicklingError("Fortran-ordered arrays are not supported")


def _frombuffer_stub(buf: Any, dtype: Any, shape: Any, order: Any) -> _ArrayStub:
    """Stand-in for ``numpy.core.numeric._frombuffer`` (pickle protocol 5)."""
    if not isinstance(buf, bytes | bytearray | memoryview | pickle.PickleBuffer):
        raise pickle.UnpicklingError(f"array buffer is {type(buf).__name__}, expected bytes")
    a = _ArrayStub()
    a.shape, a.dtype, a.raw = shape, dtype, bytes(buf)
    if order not in ("C", b"C"):
        raise pickle.UnpicklingError("Fortran-ordered arrays are not supported")
    return a


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 writes ``bytes`` this way at pickle protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refused _codecs.encode call with non-latin1 arguments")
    return text.encode("latin1")


_NDARRAY = object()  # token for the ``numpy.ndarray`` class argument; never called
# The only globals a pickled uint8 ndarray needs (numpy 1.x and 2.x module paths), each mapped
# to an inert stand-in above. Everything else is refused.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _ArrayStub,
    ("numpy._core.multiarray", "_reconstruct"): _ArrayStub,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer_stub,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer_stub,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeStub,
    ("_codecs", "encode"): _latin1_encode,
}
_ALLOWED_UINT8 = ("u1", "|u1", "uint8", "B")  # ("b" would be int8)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[key]
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def _to_array(stub: _ArrayStub, path: Path) -> np.ndarray:
    spec = getattr(stub.dtype, "spec", None)
    if spec not in _ALLOWED_UINT8:
        raise ValueError(f"{path}: array dtype {spec!r} is not uint8; not a CIFAR-10 python batch")
    raw = stub.raw.encode("latin1") if isinstance(stub.raw, str) else stub.raw
    if not isinstance(raw, bytes | bytearray):
        raise ValueError(f"{path}: array payload is {type(raw).__name__}, expected bytes")
    dims = stub.shape
    if not isinstance(dims, tuple | list) or not all(type(v) is int and v >= 0 for v in dims):
        raise ValueError(f"{path}: array shape {dims!r} is not a tuple of non-negative ints")
    shape = tuple(dims)
    if math.prod(shape) != len(raw):
        raise ValueError(f"{path}: array shape {shape} does not match its {len(raw):,} bytes")
    return np.frombuffer(bytes(raw), dtype=np.uint8).reshape(shape)


def _resolve(obj: Any, path: Path) -> Any:
    """Replace array stubs by numpy arrays; reject any other object type."""
    if isinstance(obj, _ArrayStub):
        return _to_array(obj, path)
    if isinstance(obj, dict):
        return {_resolve(k, path): _resolve(v, path) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        seq = [_resolve(v, path) for v in obj]
        return seq if isinstance(obj, list) else tuple(seq)
    if isinstance(obj, set | frozenset):
        return type(obj)(_resolve(v, path) for v in obj)
    if obj is None or isinstance(obj, bool | int | float | complex | str | bytes | bytearray):
        return obj
    raise ValueError(f"{path}: unexpected object of type {type(obj).__name__} in the pickle")


def safe_unpickle(data: bytes, path: str | Path = "<bytes>") -> Any:
    """Unpickle ``data`` accepting only plain containers, bytes, str, numbers and uint8 arrays.

    The only globals resolved are numpy's array-reconstruction names, mapped to inert stand-ins
    (no numpy or other code runs while unpickling); the arrays are then rebuilt from their raw
    bytes with ``np.frombuffer``. Strings from Python 2 pickles are decoded as ``bytes``.

    Args:
        data: the pickle bytes. path: file name used in error messages.

    Returns:
        The unpickled object (dict keys may be ``bytes`` for Python 2 pickles).

    Raises:
        ValueError: a refused global (a class or function: the message names it), a malformed
            pickle, or a non-uint8 array.
    """
    path = Path(path)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: {exc}. Only plain containers, bytes, strings, numbers and uint8 arrays are "
            f"accepted (a hostile or non-CIFAR pickle); use the official cifar-10-batches-py files."
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError,
            RecursionError, MemoryError) as exc:
        raise ValueError(
            f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); the file is corrupt"
        ) from None
    try:
        return _resolve(obj, path)
    except RecursionError:
        raise ValueError(f"{path}: the pickle is nested too deeply; not a CIFAR-10 python batch") from None


def _key(d: dict, name: str) -> Any:
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    raise KeyError(name)


def read_cifar_py(
    path: str | Path, verify: bool = True, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of the CIFAR-10 python version with :func:`safe_unpickle`.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.

    Raises:
        FileNotFoundError: missing file. ValueError: refused or corrupt pickle, missing
            ``data``/``labels``, wrong shapes, labels out of range, or (``verify``) not 10,000 images.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"missing CIFAR-10 file {path}. Point `data_dir` at the extracted cifar-10-batches-py "
            f"folder (data_batch_1 … data_batch_5, test_batch)."
        )
    d = safe_unpickle(path.read_bytes(), path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict with 'data' and 'labels', got {type(d).__name__}")
    try:
        data, labels = _key(d, "data"), _key(d, "labels")
    except KeyError as exc:
        raise ValueError(f"{path}: no {exc.args[0]!r} entry; not a CIFAR-10 python batch") from None
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        shape = getattr(data, "shape", type(data).__name__)
        raise ValueError(f"{path}: 'data' has shape {shape}, expected (N, {IMAGE_BYTES}) uint8")
    ints = isinstance(labels, list | tuple) and all(type(v) is int for v in labels)  # bool is not a label
    if not ints:
        raise ValueError(f"{path}: 'labels' must be a list of ints")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(y)} labels")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{path}: record {i} has label {int(y[i])}, outside 0..{num_classes - 1}; the file is corrupt"
        )
    if verify and len(y) != OFFICIAL_RECORDS:
        raise ValueError(
            f"{path}: {len(y):,} images, the official files hold {OFFICIAL_RECORDS:,}; pass verify=False "
            f"(`verify=False`) to read a partial or custom copy."
        )
    return data.reshape(-1, 3, 32, 32), y


# -- the dataset ------------------------------------------------------------------------------
def _layout(root: Path) -> tuple[str, Path]:
    """``("bin" | "py", folder)``; accepts the folder itself or its parent."""
    for folder in (root, root / "cifar-10-batches-bin", root / "cifar-10-batches-py"):
        if (folder / _TEST_BIN).is_file() or (folder / _TRAIN_BIN[0]).is_file():
            return "bin", folder
        if (folder / _TEST_PY).is_file() or (folder / _TRAIN_PY[0]).is_file():
            return "py", folder
    raise FileNotFoundError(
        f"no CIFAR-10 files in {root}: expected the binary version (data_batch_1.bin … test_batch.bin) or "
        f"the python version (data_batch_1 … test_batch). Pass `data_dir` pointing at the extracted "
        f"cifar-10-batches-bin or cifar-10-batches-py folder."
    )


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population) of uint8 images ``(N, C, H, W)``, in [0, 1] units.

    Computed exactly from each channel's 256-bin histogram (no float copy of the images).

    Raises:
        ValueError: empty ``x`` or a dtype other than uint8.
    """
    if x.shape[0] == 0:
        raise ValueError("cannot compute channel statistics of an empty image set")
    if x.dtype != torch.uint8:
        raise ValueError(f"channel_stats expects uint8 images, got {x.dtype}")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        p = hist / hist.sum()
        mean = float((p * values).sum())
        var = float((p * (values - mean) ** 2).sum())
        means.append(mean)
        stds.append(var**0.5)
    return tuple(means), tuple(stds)


def load_cifar10(
    root: str | Path, val_size: int = 5000, split_seed: int = 0, verify: bool = True
) -> DataSplits:
    """CIFAR-10 from ``root`` (binary or python version, detected).

    Args:
        root: the extracted ``cifar-10-batches-bin`` / ``cifar-10-batches-py`` folder, or its parent.
        val_size: images carved from the training images for validation (seeded, fixed).
        split_seed: seed of that split (keep it fixed across compared runs).
        verify: require the official 10,000 records per file (``False`` for partial copies).

    Returns:
        :class:`~lorita.data.DataSplits` named ``"cifar10"``: train ``(50000 − val_size, 3, 32, 32)``
        uint8, val, test ``(10000, 3, 32, 32)``; ``mean``/``std`` from the remaining training
        images; ``meta`` holds the layout, class names and folder.

    Raises:
        FileNotFoundError: no CIFAR-10 files / a missing batch (named).
        ValueError: a corrupt or refused file (named), or a bad ``val_size``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 folder {root} does not exist; pass `data_dir` pointing at the extracted "
            f"cifar-10-batches-bin (or cifar-10-batches-py) folder"
        )
    layout, folder = _layout(root)
    read = read_cifar_bin if layout == "bin" else read_cifar_py
    names = (_TRAIN_BIN, _TEST_BIN) if layout == "bin" else (_TRAIN_PY, _TEST_PY)
    parts = [read(folder / n, verify=verify) for n in names[0]]
    tx = np.concatenate([p[0] for p in parts])
    ty = np.concatenate([p[1] for p in parts])
    sx, sy = read(folder / names[1], verify=verify)
    classes = list(CIFAR10_CLASSES)
    meta_txt = folder / "batches.meta.txt"
    if layout == "bin" and meta_txt.is_file():
        found = [ln.strip() for ln in meta_txt.read_text(errors="replace").splitlines() if ln.strip()]
        if found and found != classes:
            logger.warning("%s lists classes %s, expected %s", meta_txt, found, classes)
    x = torch.from_numpy(np.ascontiguousarray(tx))
    y = torch.from_numpy(ty)
    tr, va = split_train_val(x.shape[0], val_size, split_seed)
    train_x = x[tr]
    mean, std = channel_stats(train_x)
    return DataSplits(
        "cifar10",
        train_x, y[tr], x[va], y[va],
        torch.from_numpy(np.array(sx, copy=True)), torch.from_numpy(sy),
        10, mean, std,
        meta={"root": str(folder), "layout": layout, "val_size": val_size, "split_seed": split_seed,
              "verified": verify, "classes": classes},
    )

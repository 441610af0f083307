"""Atomic file writes: a temp file in the target's folder, then ``os.replace`` — a crash or an
error never leaves a half-written file under the target name. Imported by every module that
writes a file (``io``, ``export``, ``quantize``, the workflows) without importing model code.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_path", "atomic_target", "atomic_write_text", "write_json", "atomic_torch_save", "file_bytes"]


def atomic_target(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """Create ``.NAME.<random>.tmp`` next to ``path`` (mode 0o666 minus the umask, like a plain
    ``open``) and return ``(fd, temp path)``; the caller renames it over ``path`` when done."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file path such as {path / 'model.safetensors'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}")
            try:
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
            except FileExistsError:
                continue
        raise ValueError(f"cannot create a temporary file next to {path}")
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"cannot write {path}: a parent of it is a file, not a folder") from None
    except PermissionError:
        raise ValueError(f"cannot write {path}: permission denied; choose a writable folder") from None


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary file path next to ``path``; on success it replaces ``path`` atomically.

    The temp file keeps the mode a plain ``open`` would give (writers that recreate it with 0600
    are corrected). On any error the temp file is removed and ``path`` is left as it was.

    Raises:
        ValueError: ``path`` is a directory or its folder cannot be written.
    """
    path = Path(path)
    fd, tmp = atomic_target(path, suffix)
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then rename).

    Raises:
        ValueError: ``path`` is a directory or its folder cannot be written.
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (plus a newline) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def file_bytes(path: str | Path) -> int:
    """Size of a file on disk in bytes."""
    return os.path.getsize(path)

"""Save and load models in any lorita form (dense, factorized, low-rank).

One safetensors file holds the ``state_dict`` and, in its metadata, a JSON manifest
(``"lorita"`` key): the lorita version and each non-dense layer's form
(``{"form": "factorized", "kind": "FactorizedLinear", "depth": 3}`` or
``{"form": "low_rank", "kind": "LowRankConv2d", "rank": 8}``). :func:`load` rebuilds those layers
on a freshly built instance of the user's own (dense) model class and loads with ``strict=True``.
Writes are atomic (temp file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from lorita.layers import FactorizedConv2d, FactorizedLinear, LowRankConv2d, LowRankLinear

__all__ = ["save", "load", "read_manifest", "manifest_of", "atomic_write_text", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_KINDS: dict[str, type] = {
    "FactorizedLinear": FactorizedLinear,
    "FactorizedConv2d": FactorizedConv2d,
    "LowRankLinear": LowRankLinear,
    "LowRankConv2d": LowRankConv2d,
}
_DENSE_OF = {
    "FactorizedLinear": nn.Linear,
    "FactorizedConv2d": nn.Conv2d,
    "LowRankLinear": nn.Linear,
    "LowRankConv2d": nn.Conv2d,
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lorita")
    except PackageNotFoundError:
        return "unknown"


def manifest_of(model: nn.Module, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest :func:`save` writes for ``model``: version, per-layer forms, user metadata."""
    layers: dict[str, dict[str, Any]] = {}
    for fqn, mod in model.named_modules():
        if isinstance(mod, (FactorizedLinear, FactorizedConv2d)):
            layers[fqn] = {"form": "factorized", "kind": type(mod).__name__, "depth": mod.depth}
            if mod.forward_mode != "auto":
                layers[fqn]["forward_mode"] = mod.forward_mode
        elif isinstance(mod, (LowRankLinear, LowRankConv2d)):
            layers[fqn] = {"form": "low_rank", "kind": type(mod).__name__, "rank": mod.rank}
    return {
        "format": "lorita",
        "format_version": FORMAT_VERSION,
        "lorita_version": _version(),
        "model_class": type(model).__name__,
        "layers": layers,
        "metadata": dict(metadata or {}),
    }


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(model: nn.Module, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s ``state_dict`` and manifest to one safetensors file, atomically.

    Args:
        model: dense, factorized or low-rank model.
        path: target file (``.safetensors``); parent folders are created.
        metadata: extra JSON-serializable info stored in the manifest.

    Returns:
        The path written.

    Raises:
        TypeError: metadata that is not JSON-serializable.
    """
    path = Path(path)
    manifest = manifest_of(model, metadata)
    try:
        text = json.dumps(manifest, sort_keys=True)
    except TypeError as exc:
        raise TypeError(f"`metadata` must be JSON-serializable: {exc}") from None
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        save_model(model, tmp, metadata={"lorita": text})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest stored in a file written by :func:`save`.

    Raises:
        FileNotFoundError: missing file. ValueError: not a safetensors file, or no lorita manifest.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt") from None
    if "lorita" not in meta:
        raise ValueError(f"{path} has no lorita manifest; it was not written by lorita.save")
    try:
        manifest = json.loads(meta["lorita"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the lorita manifest is not valid JSON ({exc})") from None
    if manifest.get("format") != "lorita" or not isinstance(manifest.get("layers"), dict):
        raise ValueError(f"{path}: malformed lorita manifest")
    return manifest


def _rebuild(model: nn.Module, layers: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    from lorita.surgery import _set_module  # local: surgery imports layers only

    modules = dict(model.named_modules())
    for fqn, spec in layers.items():
        kind = spec.get("kind")
        if kind not in _KINDS:
            raise ValueError(f"{path}: layer `{fqn}` has unknown kind {kind!r} in the manifest")
        mod = modules.get(fqn)
        if mod is None:
            raise ValueError(
                f"{path}: layer `{fqn}` from the manifest is not in {type(model).__name__}; the file was "
                f"saved from another model (build the same architecture before loading)"
            )
        if type(mod) is not _DENSE_OF[kind]:
            raise ValueError(
                f"{path}: layer `{fqn}` is a {type(mod).__name__} in the model but the file holds a {kind}; "
                f"load into a freshly built, unmodified model"
            )
        try:
            if spec["form"] == "factorized":
                new = _KINDS[kind].from_dense(mod, int(spec["depth"]), forward_mode=spec.get("forward_mode", "auto"))
            elif spec["form"] == "low_rank":
                r = int(spec["rank"])
                if kind == "LowRankLinear":
                    new = LowRankLinear(mod.in_features, mod.out_features, r, mod.bias is not None,
                                        mod.weight.device, mod.weight.dtype)
                else:
                    new = LowRankConv2d(mod.in_channels, mod.out_channels, mod.kernel_size, r, mod.stride,
                                        mod.padding, mod.dilation, mod.bias is not None, mod.padding_mode,
                                        device=mod.weight.device, dtype=mod.weight.dtype)
            else:
                raise ValueError(f"unknown form {spec.get('form')!r}")
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: cannot rebuild layer `{fqn}` from manifest {dict(spec)}: {exc}") from None
        _set_module(model, fqn, new)


def load(model: nn.Module, path: str | Path, inplace: bool = False) -> nn.Module:
    """Load a file written by :func:`save` into a freshly built instance of the same model class.

    Layers stored as factorized or low-rank are rebuilt on ``model`` first, then the weights load
    with ``strict=True``.

    Args:
        model: a new, unmodified instance of the architecture that was saved.
        path: the ``.safetensors`` file.
        inplace: rebuild ``model`` itself (only after the load has succeeded on a copy).

    Returns:
        The loaded model.

    Raises:
        FileNotFoundError / ValueError: missing, truncated or corrupt file, a manifest that does
            not fit the model, or mismatched keys/shapes — the model is left unchanged.
    """
    path = Path(path)
    manifest = read_manifest(path)
    work = copy.deepcopy(model)
    _rebuild(work, manifest["layers"], path)
    try:
        missing, unexpected = load_model(work, str(path), strict=False)
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise ValueError(
            f"{path}: weights do not fit {type(model).__name__} ({str(exc).splitlines()[0][:300]}); the file "
            f"was saved from another model or is corrupt"
        ) from None
    if missing or unexpected:
        raise ValueError(
            f"{path}: keys do not match {type(model).__name__}: missing {sorted(missing)[:8]}, unexpected "
            f"{sorted(unexpected)[:8]}; load into the architecture that was saved"
        )
    if not inplace:
        return work
    _rebuild(model, manifest["layers"], path)
    model.load_state_dict(work.state_dict(), strict=True)
    return model

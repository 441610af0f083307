"""Save and load models in any lorita form (dense, factorized, low-rank).

One safetensors file holds the ``state_dict`` and, in its metadata, a JSON manifest
(``"lorita"`` key): the lorita version and each non-dense layer's form
(``{"form": "factorized", "kind": "FactorizedLinear", "depth": 3}`` or
``{"form": "low_rank", "kind": "LowRankConv2d", "rank": 8}``) and the SHA-256 of every tensor.
:func:`load` verifies the checksums, rebuilds those layers on a freshly built instance of the
user's own (dense) model class and loads with ``strict=True``.

Guarantees:

* Writes are atomic (temp file in the same folder, then ``os.replace``): a crash or an error never
  leaves a half-written file under the target name.
* Reading never unpickles: safetensors only (and ``torch.load(..., weights_only=True)`` wherever
  lorita reads a ``.pt`` file).
* A file that is missing, truncated, corrupt, written by another tool or for another model, or
  whose manifest does not match its tensors, raises one ``FileNotFoundError``/``ValueError`` that
  names the file, the layer (where there is one) and the fix; the target model is left unchanged
  (all work happens on a copy).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from lorita._files import atomic_path, atomic_target, atomic_write_text
from lorita.distributed import unwrap
from lorita.layers import (
    FactorizedConv1d,
    FactorizedConv2d,
    FactorizedLayer,
    FactorizedLinear,
    LowRankConv1d,
    LowRankConv2d,
    LowRankLayer,
    LowRankLinear,
)
from lorita.layers.attention import FactorizedMultiheadAttention
from lorita.layers.transposed import FactorizedTransposedLinear, LowRankTransposedLinear, is_transposed_linear
from lorita.targeting import is_inside

__all__ = ["save", "load", "read_manifest", "manifest_of", "atomic_write_text", "atomic_target", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_KINDS: dict[str, type] = {
    c.__name__: c
    for c in (
        FactorizedLinear, FactorizedConv1d, FactorizedConv2d, FactorizedTransposedLinear,
        FactorizedMultiheadAttention, LowRankLinear, LowRankConv1d, LowRankConv2d, LowRankTransposedLinear,
    )
}
_FACTORIZED = (FactorizedLayer,)
_LOW_RANK = (LowRankLayer,)


def _dense_kind_ok(kind: str, mod: nn.Module) -> bool:
    """Whether ``mod`` (in a freshly built model) is the dense layer a ``kind`` layer comes from."""
    if "Transposed" in kind:
        return is_transposed_linear(mod)
    if kind == "FactorizedMultiheadAttention":
        return type(mod) is nn.MultiheadAttention
    dense = {"Linear": nn.Linear, "Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d}
    suffix = kind.removeprefix("Factorized").removeprefix("LowRank")
    return type(mod) is dense.get(suffix)


def _dense_name(kind: str) -> str:
    if "Transposed" in kind:
        return "Conv1D (GPT-2)"
    if kind == "FactorizedMultiheadAttention":
        return "MultiheadAttention"
    return kind.removeprefix("Factorized").removeprefix("LowRank")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lorita")
    except PackageNotFoundError:
        return "unknown"


def manifest_of(model: nn.Module, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest :func:`save` writes for ``model``: version, per-layer forms, user metadata.

    Returns:
        ``{"format": "lorita", "format_version", "lorita_version", "model_class",
        "layers": {fqn: {"form", "kind", "depth" | "rank"[, "forward_mode"][, "factor_side"]}}, "metadata"}``
        (``factor_side`` only when not the paper's ``"input"``; files without it load as before).
    """
    layers: dict[str, dict[str, Any]] = {}
    for fqn, mod in model.named_modules():
        if is_inside(fqn, layers):
            continue  # inside a recorded layer (the projections of a factorized attention)
        if isinstance(mod, _FACTORIZED):
            layers[fqn] = {"form": "factorized", "kind": type(mod).__name__, "depth": mod.depth}
            mode = getattr(mod, "forward_mode", "auto")
            if mode != "auto" and not isinstance(mod, FactorizedMultiheadAttention):
                layers[fqn]["forward_mode"] = mode
            side = getattr(mod, "factor_side", "input")
            if side != "input" and not isinstance(mod, FactorizedConv2d):  # conv: one form only
                layers[fqn]["factor_side"] = side
        elif isinstance(mod, _LOW_RANK):
            layers[fqn] = {"form": "low_rank", "kind": type(mod).__name__, "rank": mod.rank}
    return {
        "format": "lorita",
        "format_version": FORMAT_VERSION,
        "lorita_version": _version(),
        "model_class": type(model).__name__,
        "layers": layers,
        "metadata": dict(metadata or {}),
    }


def save(model: nn.Module, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s ``state_dict`` and manifest to one safetensors file, atomically.

    A ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile`` wrapper is unwrapped first,
    so keys carry no ``module.`` / ``_orig_mod.`` prefix and load into the bare model class; shared
    (tied) parameters are stored once.

    Args:
        model: dense, factorized or low-rank model.
        path: target file (``.safetensors``); parent folders are created.
        metadata: extra JSON-serializable info stored in the manifest.

    Returns:
        The path written.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or metadata is not JSON-serializable.
        ValueError: ``path`` is a directory or cannot be written. Nothing is left behind.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    path = Path(path)
    manifest = manifest_of(model, metadata)
    manifest["sha256"] = {k: _sha256(v) for k, v in model.state_dict().items()}  # checked by load
    try:
        text = json.dumps(manifest, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`metadata` must be JSON-serializable: {exc}") from None
    with atomic_path(path) as tmp:
        save_model(model, tmp, metadata={"lorita": text})
    return path


def _check_file(path: Path) -> None:
    if path.is_dir():
        hint = next(iter(sorted(path.glob("*.safetensors"))), None)
        more = f" (e.g. {hint})" if hint else ""
        raise ValueError(f"{path} is a directory; pass the .safetensors file inside it{more}")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; check the path")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{path} is not readable (permission denied); fix its permissions")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest stored in a file written by :func:`save`.

    Raises:
        FileNotFoundError: missing file.
        ValueError: a directory, an unreadable, truncated or corrupt file, a safetensors file
            without a lorita manifest, or one written by a newer lorita.
    """
    path = Path(path)
    _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{path} is not a readable safetensors file ({exc}); it is truncated or corrupt — copy it "
            f"again or re-save it with lorita.save"
        ) from None
    if "lorita" not in meta:
        raise ValueError(
            f"{path} has no lorita manifest; it was not written by lorita.save (for a plain state_dict "
            f"use safetensors.torch.load_model)"
        )
    try:
        manifest = json.loads(meta["lorita"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the lorita manifest is not valid JSON ({exc}); re-save the model") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "lorita" or not isinstance(
        manifest.get("layers"), dict
    ):
        raise ValueError(f"{path}: malformed lorita manifest (no `format`/`layers`); re-save the model")
    version = manifest.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} uses lorita file format {version!r}, newer than this lorita's {FORMAT_VERSION}; "
            f"upgrade lorita"
        )
    return manifest


def _low_rank_skeleton(cls: type, mod: nn.Module, rank: int) -> nn.Module:
    """An empty low-rank layer of the right shapes for ``mod`` (the weights come from the file)."""
    return cls._empty_like(mod, rank).train(mod.training)


def _rebuild(model: nn.Module, layers: Mapping[str, Any], path: Path) -> nn.Module:
    """Rebuild the manifest's factorized/low-rank layers on ``model``; returns the model (the
    rebuilt layer itself when the file holds a bare layer, fqn ``""``)."""
    from lorita.surgery import _set_module  # local: surgery imports layers only

    modules = dict(model.named_modules())
    new_layers: dict[str, nn.Module] = {}
    for fqn, spec in layers.items():
        if not isinstance(spec, Mapping):
            raise ValueError(f"{path}: layer `{fqn}` has a malformed manifest entry {spec!r}; re-save the model")
        kind = spec.get("kind")
        if kind not in _KINDS:
            raise ValueError(
                f"{path}: layer `{fqn}` has unknown kind {kind!r} in the manifest; it was written by another "
                f"lorita version (known kinds: {sorted(_KINDS)})"
            )
        mod = modules.get(fqn)
        if mod is None:
            raise ValueError(
                f"{path}: layer `{fqn}` from the manifest is not in {type(model).__name__}; the file was "
                f"saved from another model ({_saved_from(layers)}) — build the same architecture before loading"
            )
        if not _dense_kind_ok(kind, mod):
            raise ValueError(
                f"{path}: layer `{fqn}` is a {type(mod).__name__} in the model but the file holds a {kind} "
                f"(made from a {_dense_name(kind)}); load into a freshly built, unmodified model of the "
                f"architecture that was saved"
            )
        try:
            form = spec.get("form")
            if form == "factorized":
                depth = spec["depth"]
                if isinstance(depth, bool) or not isinstance(depth, int):
                    raise ValueError(f"`depth` must be an int, got {depth!r}")
                new = _KINDS[kind].from_dense(
                    mod, depth, forward_mode=spec.get("forward_mode", "auto"),
                    factor_side=spec.get("factor_side", "input"),
                )
            elif form == "low_rank":
                rank = spec["rank"]
                if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                    raise ValueError(f"`rank` must be an int >= 1, got {rank!r}")
                new = _low_rank_skeleton(_KINDS[kind], mod, rank)
            else:
                raise ValueError(f"unknown form {form!r}")
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(
                f"{path}: cannot rebuild layer `{fqn}` from manifest entry {dict(spec)}: {exc}; re-save the model"
            ) from None
        new_layers[fqn] = new
    if "" in new_layers:
        return new_layers[""]
    for fqn, new in new_layers.items():
        _set_module(model, fqn, new)
    return model


def _lorita_layers(model: nn.Module) -> list[tuple[str, str]]:
    """``[(fqn, kind)]`` of the factorized/low-rank layers already in ``model`` (outermost only)."""
    found: list[tuple[str, str]] = []
    for fqn, mod in model.named_modules():
        if isinstance(mod, tuple(_KINDS.values())) and not is_inside(fqn, [d for d, _ in found]):
            found.append((fqn, type(mod).__name__))
    return found


def _saved_from(layers: Mapping[str, Any]) -> str:
    names = list(layers)[:3]
    return "its layers include " + ", ".join(f"`{n}`" for n in names) if names else "different layers"


def _layer_of(key: str) -> str:
    """Module fqn of a state_dict key (``fc1.factors.0`` → ``fc1``; ``attn.in_proj_weight`` → ``attn``)."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[-2] == "factors":
        return ".".join(parts[:-2])
    return ".".join(parts[:-1]) or key


def _describe(layers: Mapping[str, Any], fqn: str) -> str:
    for name, spec in layers.items():
        if fqn == name or is_inside(fqn, [name]):
            detail = f"depth {spec.get('depth')}" if spec.get("form") == "factorized" else f"rank {spec.get('rank')}"
            return f" (the manifest says `{name}` is {spec.get('kind')} {detail})"
    return ""


def _sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's raw bytes (any dtype or device)."""
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(raw.tobytes()).hexdigest()


def _check_tensors(work: nn.Module, path: Path, manifest: Mapping[str, Any], cls_hint: str) -> None:
    """Check the file's tensors against the checksums saved in its manifest (bit rot, partial copies
    that kept the size), then their names and shapes against ``work``'s, before loading anything."""
    sums = manifest.get("sha256", {})
    sums = sums if isinstance(sums, Mapping) else {}
    layers = manifest.get("layers", {})
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            for k in shapes:
                if k in sums and _sha256(f.get_tensor(k)) != sums[k]:
                    fqn = _layer_of(k)
                    raise ValueError(
                        f"{path}: layer `{fqn}`: the data of `{k}` does not match the checksum stored when it "
                        f"was saved; the file is corrupt — copy it again or re-save it"
                    )
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ValueError(f"{path} is truncated or corrupt ({exc}); copy it again or re-save it") from None
    sd = work.state_dict()
    for key, tensor in sd.items():  # model order: a layer's weight before its bias
        shape = shapes.get(key)
        if shape is not None and tuple(tensor.shape) != shape:
            fqn = _layer_of(key)
            raise ValueError(
                f"{path}: layer `{fqn}`: `{key}` has shape {shape} in the file but {tuple(sd[key].shape)} in "
                f"{type(work).__name__}{_describe(layers, fqn)}; build the model with the configuration that "
                f"was saved{cls_hint}"
            )


def load(model: nn.Module, path: str | Path, inplace: bool = False) -> nn.Module:
    """Load a file written by :func:`save` into a freshly built instance of the same model class.

    Layers stored as factorized or low-rank are rebuilt on ``model`` first, then the weights load
    with ``strict=True`` semantics (every key present, no extra key, every shape equal).

    Args:
        model: a new, unmodified instance of the architecture that was saved (not factorized or
            split: the file's factorized/low-rank layers are rebuilt on it).
        path: the ``.safetensors`` file.
        inplace: rebuild ``model`` itself (only after the load has succeeded on a copy).

    Returns:
        The loaded model (outputs equal the saved model's).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        FileNotFoundError / ValueError: missing, unreadable, truncated or corrupt file, a manifest
            that does not fit the model, or mismatched keys/shapes (the message names the file,
            the layer and the fix), or a ``model`` that already has factorized/low-rank layers —
            the model is left unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    path = Path(path)
    manifest = read_manifest(path)
    saved_cls = manifest.get("model_class")
    cls_hint = (
        f" (the file was saved from a {saved_cls}, not a {type(model).__name__})"
        if saved_cls and saved_cls != type(model).__name__
        else ""
    )
    already = _lorita_layers(model)
    if already:
        fqn, kind = already[0]
        more = f" (and {len(already) - 1} more)" if len(already) > 1 else ""
        name = type(model).__name__
        raise ValueError(
            f"{path}: layer `{fqn}` of the model passed is already a {kind}{more}: `load` expects a freshly "
            f"built, unmodified instance of {name} (e.g. lorita.load({name}(...), path)), not a factorized or "
            f"low-rank one — the file rebuilds its factorized/low-rank layers itself"
        )
    work = _rebuild(copy.deepcopy(model), manifest["layers"], path)
    _check_tensors(work, path, manifest, cls_hint)
    try:
        missing, unexpected = load_model(work, str(path), strict=False)
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise ValueError(
            f"{path}: weights do not fit {type(model).__name__} ({str(exc).splitlines()[0][:300]}); the file "
            f"is corrupt or was saved from another model{cls_hint}"
        ) from None
    if missing or unexpected:
        key = sorted(missing)[0] if missing else sorted(unexpected)[0]
        fqn = _layer_of(key)
        where = "the model has it but the file does not" if missing else "the file has it but the model does not"
        raise ValueError(
            f"{path}: layer `{fqn}`: key `{key}`: {where}{_describe(manifest['layers'], fqn)} "
            f"[{len(missing)} missing, {len(unexpected)} unexpected keys]; load into the architecture that "
            f"was saved{cls_hint}"
        )
    if not inplace:
        return work
    model = _rebuild(model, manifest["layers"], path)
    model.load_state_dict(work.state_dict(), strict=True)
    return model

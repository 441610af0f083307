"""Dynamic int8 quantization after truncation (PyTorch's own eager-mode API), and its files.

LoRITa (arXiv 2405.03089) names quantization as the other companion of low-rank compression: the
two thin layers of a :class:`~lorita.layers.LowRankLinear` are ordinary ``nn.Linear`` modules, so
PyTorch's dynamic quantization turns them (and any remaining dense ``nn.Linear``) into int8
weights with per-tensor scales; activations are quantized on the fly at run time. Convolutions
stay float (dynamic quantization has no conv kernels).

API used: ``torch.ao.quantization.quantize_dynamic`` — still shipped and working in torch 2.13
but deprecated there in favour of torchao's ``quantize_``. It is optional: :func:`int8_available`
says whether it works here, and :func:`quantize_int8` raises a clear ``RuntimeError`` when not.

Files: quantized (packed) tensors cannot go into safetensors, so :func:`save_quantized` writes a
``torch.save`` file (a dict of the ``state_dict`` and the lorita manifest), loaded back with
``weights_only=True`` by :func:`load_quantized`.
"""

from __future__ import annotations

import copy
import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorita._files import file_bytes

__all__ = ["int8_available", "quantize_int8", "save_quantized", "load_quantized", "file_bytes"]

_FORMAT = "lorita-int8"


def _quantize_dynamic():
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:  # removed in a future torch
        raise RuntimeError(
            f"int8 quantization needs torch.ao.quantization.quantize_dynamic, which this torch "
            f"({torch.__version__}) does not provide ({exc}); drop `quantize` / quantize_int8 or use a "
            f"torch that still ships it (<= 2.13 tested)"
        ) from None
    return quantize_dynamic


def int8_available() -> str | None:
    """None if dynamic int8 quantization works in this torch build, else the reason (one line)."""
    try:
        qd = _quantize_dynamic()
        engines = torch.backends.quantized.supported_engines
        if not any(e != "none" for e in engines):
            return f"no quantized engine in this torch build (supported_engines={engines})"
        probe = nn.Sequential(nn.Linear(4, 2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qd(probe, {nn.Linear}, dtype=torch.qint8)(torch.zeros(1, 4))
    except (RuntimeError, AttributeError) as exc:
        return str(exc).splitlines()[0]
    return None


def quantize_int8(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Dynamic int8 quantization of every ``nn.Linear`` (the thin halves of low-rank layers too).

    Weights become int8 with a per-tensor scale and zero point; activations are quantized per
    batch at run time; biases stay float. Conv layers and everything else are unchanged. CPU only.

    Args:
        model: a float model on CPU, typically the output of :func:`lorita.to_low_rank` or
            :func:`lorita.search`.
        inplace: quantize ``model`` itself instead of a deep copy.

    Returns:
        The quantized model (eval mode). Its outputs differ from the float model's by the int8
        rounding: on an MNIST FCN the logits' relative error is about 3% (tested bound: 5%,
        with >= 97% of predictions unchanged).

    Raises:
        RuntimeError: dynamic quantization is not available in this torch (message says what to do).
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: the model still has factorized layers (merge or split them first), has no
            ``nn.Linear`` (nothing to quantize), or a parameter is not on the CPU.
    """
    qd = _quantize_dynamic()
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    _check_quantizable(model)
    for name, p in model.named_parameters():
        if p.device.type != "cpu":
            raise ValueError(
                f"`{name}` is on {p.device}; dynamic int8 quantization runs on CPU: call model.cpu()"
            )
    work = model if inplace else copy.deepcopy(model)
    work.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        if type(work) is nn.Linear:  # quantize_dynamic only swaps children: wrap a bare Linear
            return qd(nn.Sequential(work), {nn.Linear}, dtype=torch.qint8, inplace=True)[0]
        return qd(work, {nn.Linear}, dtype=torch.qint8, inplace=True)


def _check_quantizable(model: nn.Module) -> None:
    """Raise if ``model`` still has factorized layers (their factors would stay float) or has no
    ``nn.Linear`` at all (nothing would be quantized)."""
    from lorita.layers import FactorizedLayer
    from lorita.targeting import is_inside

    found: list[tuple[str, str]] = []
    for fqn, m in model.named_modules():
        if isinstance(m, FactorizedLayer) and not is_inside(fqn, [f for f, _ in found]):
            found.append((fqn, type(m).__name__))
    if found:
        more = f" and {len(found) - 4} more" if len(found) > 4 else ""
        shown = ", ".join(f"`{n or '(the model itself)'}` ({k})" for n, k in found[:4]) + more
        raise ValueError(
            f"{type(model).__name__} still has factorized layers: {shown}; int8 quantization would leave them "
            f"float. Call lorita.merge(model) (dense) or lorita.to_low_rank(model, ranks) first, then quantize"
        )
    if not any(type(m) is nn.Linear for m in model.modules()):
        kinds = sorted({type(m).__name__ for m in model.modules() if any(True for _ in m.parameters(recurse=False))})
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer (weight layers: {', '.join(kinds) or 'none'}): dynamic "
            f"int8 quantization only converts nn.Linear (convolutions stay float), so there is nothing to quantize; "
            f"keep the float model"
        )


def save_quantized(
    model: nn.Module,
    path: str | Path,
    float_model: nn.Module | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a quantized model's ``state_dict`` plus a lorita manifest, atomically.

    Args:
        model: output of :func:`quantize_int8`.
        path: target file (``.pt``); parent folders are created.
        float_model: the float model it was quantized from (its low-rank layer ranks go into the
            manifest, so :func:`load_quantized` can rebuild the structure); None: no layers listed.
        metadata: extra JSON-serializable info.

    Returns:
        The path written.
    """
    from lorita.io import atomic_path, manifest_of

    path = Path(path)
    manifest = manifest_of(float_model if float_model is not None else nn.Module(), metadata)
    manifest["format"] = _FORMAT
    if float_model is None:
        manifest["model_class"] = type(model).__name__
    payload = {"manifest": json.dumps(manifest, sort_keys=True), "state_dict": model.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_quantized(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a file written by :func:`save_quantized`.

    Args:
        model: a float model of the saved architecture — either already in its low-rank form
            (e.g. ``lorita.load(model, "low_rank.safetensors")``) or a freshly built dense
            instance, whose layers are then split to the manifest's ranks first. Not modified.
        path: the ``.pt`` file.

    Returns:
        The quantized model with the saved weights (eval mode).

    Raises:
        FileNotFoundError: missing file. ValueError: not a lorita int8 file, or a model whose
            structure or shapes do not fit it (the message names the file, the class the file was
            saved from and the one passed). RuntimeError: quantization unavailable.
    """
    from lorita.io import manifest_of
    from lorita.surgery import to_low_rank

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no quantized model at {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
        manifest = json.loads(payload["manifest"])
        state = payload["state_dict"]
    except (RuntimeError, OSError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(
            f"{path} is not a lorita int8 file or is corrupt ({str(exc).splitlines()[0][:200]})"
        ) from None
    if manifest.get("format") != _FORMAT:
        raise ValueError(f"{path}: manifest format {manifest.get('format')!r}, expected {_FORMAT!r}")
    name = type(model).__name__
    saved_cls = manifest.get("model_class")
    if isinstance(saved_cls, str) and saved_cls not in ("Module", name):
        fix = (
            f"; the file holds a quantized {saved_cls} but the model passed is a {name} — pass a freshly "
            f"built {saved_cls} with the configuration that was saved"
        )
    else:
        fix = f"; pass a {name} built with the configuration that was saved"
    stored = manifest.get("layers", {})
    have = manifest_of(model)["layers"]
    work = model
    if have != stored:
        if have:
            raise ValueError(
                f"{path}: the model's lorita layers {have} differ from the file's {stored}; pass the float "
                f"model the file was quantized from, or a freshly built dense one"
            )
        ranks = {fqn: int(spec["rank"]) for fqn, spec in stored.items() if spec.get("form") == "low_rank"}
        modules = dict(model.named_modules())
        absent = [fqn for fqn in ranks if fqn not in modules]
        if absent:
            shown = ", ".join(f"`{n}`" for n in absent[:3]) + (" ..." if len(absent) > 3 else "")
            raise ValueError(f"{path}: its low-rank layer(s) {shown} are not modules of the {name} passed{fix}")
        try:
            work = to_low_rank(model, ranks) if ranks else model
        except ValueError as exc:
            raise ValueError(f"{path}: cannot split the {name} passed to the file's ranks ({exc}){fix}") from None
    try:
        q = quantize_int8(work)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}{fix}") from None
    problem = _state_mismatch(q.state_dict(), state)
    if problem is None:
        try:
            q.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            problem = str(exc).splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if problem is not None:
        raise ValueError(f"{path}: weights do not fit the {name} passed ({problem}){fix}")
    return q


def _weight_shape(value: Any) -> tuple[int, ...] | None:
    """Shape of a state_dict entry: a tensor, or the weight of a packed ``(weight, bias)`` pair."""
    if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
        value = value[0]
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _state_mismatch(want: dict[str, Any], got: Any) -> str | None:
    """Why the file's state ``got`` does not fit the quantized model's ``want`` (None: it fits).

    Packed int8 weights load without any shape check in PyTorch, so shapes are compared here."""
    if not isinstance(got, dict):
        return f"the file's state_dict is a {type(got).__name__}, not a dict"
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        key = missing[0] if missing else extra[0]
        where = "the model has it but the file does not" if missing else "the file has it but the model does not"
        return f"key `{key}`: {where} [{len(missing)} missing, {len(extra)} unexpected keys]"
    for key, value in want.items():
        mine, theirs = _weight_shape(value), _weight_shape(got[key])
        if mine != theirs:
            return f"`{key}` has shape {theirs} in the file but {mine} in the model"
    return None



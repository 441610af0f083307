"""Export a (low-rank) model to ONNX with ``torch.onnx`` and check it with onnxruntime.

The deployable model of :func:`lorita.to_low_rank` is made of plain ``nn.Linear`` / ``nn.Conv1d``
/ ``nn.Conv2d`` pairs, so the standard exporter (``torch.onnx.export(..., dynamo=True)``, which
needs the ``onnxscript`` package) handles it without custom ops. The file is written to a temp
name, checked, then renamed: a failed export or check leaves no ``OUT.onnx`` behind.

Optional dependencies: ``pip install 'lorita[onnx]'`` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import copy
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lorita._files import atomic_path, file_bytes
from lorita.export_int8 import (
    Int8Report,
    calibration_batches,
    compare_onnx,
    first_samples,
    log_report,
    quantize_onnx,
    strip_debug_metadata,
)
from lorita.fold import fold_batchnorm

__all__ = ["export_onnx", "export_int8", "onnx_max_abs_diff", "ONNX_ATOL", "ONNX_RTOL"]

logger = logging.getLogger(__name__)

#: Default agreement required between onnxruntime and PyTorch outputs (float32):
#: ``|ort - torch| <= ONNX_ATOL + ONNX_RTOL·|torch|`` element-wise.
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-4
_MAX_SINGLE_FILE_BYTES = 2**31 - 2**27  # protobuf's 2 GiB limit, with headroom for the graph
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, without ANSI colour codes; for
    torch.onnx's multi-line report, the line under its ``## Exception summary`` heading (the
    cause) instead of the generic first line."""
    text = _ANSI.sub("", str(exc)).strip()
    if not text:
        return type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines[:-1]):
        if ln.lstrip("#").strip().lower() == "exception summary":
            return lines[i + 1][:limit]
    return lines[0][:limit]


# Known noise of torch.onnx's exporter, silenced only for the duration of one export: the
# "torchvision is not installed. Skipping torchvision::nms" notices (logged once per op by its
# registry) and torch.export's pytree FutureWarning about ``LeafSpec``.
_NOISY_LOGGER = "torch.onnx._internal.exporter._registration"


class _DropTorchvisionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "torchvision is not installed" not in record.getMessage()


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    log = logging.getLogger(_NOISY_LOGGER)
    notice = _DropTorchvisionNotice()
    log.addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        log.removeFilter(notice)


def _batch_independent(model: nn.Module) -> nn.Module:
    """``model``, or a copy whose factorized layers run ``forward_mode="merged"`` where they were
    ``"auto"``: "auto" picks chain or merged by the batch size, a branch a dynamic-batch export
    cannot capture; "merged" computes the same map (exact up to float rounding) for every batch."""
    auto = [fqn for fqn, m in model.named_modules() if getattr(m, "forward_mode", None) == "auto"]
    if not auto:
        return model
    work = copy.deepcopy(model)
    for fqn in auto:
        work.get_submodule(fqn).forward_mode = "merged"
    logger.info(
        "export_onnx: %d factorized layers exported with forward_mode='merged' (was 'auto'); export "
        "lorita.merge(model) for a smaller file with the same outputs", len(auto),
    )
    return work


def _shapes(inputs: tuple[Tensor, ...]) -> str:
    return ", ".join(str(tuple(t.shape)) for t in inputs)


def _check_runs(model: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    """Run ``model`` eagerly on ``inputs`` (no grad) so a bad input is one clear error instead of
    torch.export's fake-tensor logs."""
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:  # any error of the user's forward
        what = "shape" if len(inputs) == 1 else "shapes"
        raise ValueError(
            f"{type(model).__name__} fails on `example_inputs` of {what} {_shapes(inputs)} "
            f"({type(exc).__name__}: {_one_line(exc)}); pass example inputs the model accepts, e.g. a batch "
            f"of its real inputs"
        ) from None


def _as_tuple(example_inputs: Any) -> tuple[Tensor, ...]:
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError("`example_inputs` must be a tensor or a tuple of tensors the model accepts")
    return inputs


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"ONNX export needs the optional package `{module}`; install it with pip install 'lorita[onnx]'"
        ) from None


def onnx_max_abs_diff(model: nn.Module, path: str | Path, example_inputs: Any) -> tuple[float, bool]:
    """Run the ONNX file with onnxruntime (CPU) and compare with ``model`` on the same inputs.

    Args:
        model: the PyTorch model (run in eval mode, no grad).
        path: the ``.onnx`` file.
        example_inputs: a tensor or tuple of tensors (float32 recommended).

    Returns:
        ``(max |ort − torch|, within)`` where ``within`` is whether every element satisfies
        ``|ort − torch| <= ONNX_ATOL + ONNX_RTOL·|torch|``.

    Raises:
        ValueError: onnxruntime is not installed, or the output counts differ.
    """
    ort = _require("onnxruntime")
    inputs = _as_tuple(example_inputs)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(sess.get_inputs(), inputs, strict=True)}
    got = sess.run(None, feeds)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ref = model(*inputs)
    model.train(was_training)
    refs = [ref] if isinstance(ref, Tensor) else [r for r in ref if isinstance(r, Tensor)]
    if len(refs) != len(got):
        raise ValueError(f"{path}: onnxruntime returned {len(got)} outputs, PyTorch {len(refs)}")
    worst, within = 0.0, True
    for r, g in zip(refs, got, strict=True):
        r = r.detach().cpu().float().numpy()
        diff = np.abs(g.astype(np.float32) - r)
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        within = within and bool((diff <= ONNX_ATOL + ONNX_RTOL * np.abs(r)).all())
    return worst, within


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | Path,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
    check: bool = True,
    input_names: Sequence[str] | None = None,
    int8: Any = None,
) -> tuple[Path, float | None]:
    """Export ``model`` (eval mode) to one ``.onnx`` file, atomically, and check it.

    Args:
        model: any exportable model, typically the output of :func:`lorita.to_low_rank` (plain
            Linear/Conv layers) or :func:`lorita.merge`.
        example_inputs: a tensor or tuple of tensors, e.g. ``torch.randn(2, 1, 28, 28)``. Use a
            batch of at least 2 when ``dynamic_batch`` (size-1 dims are specialized by torch.export).
        path: the ``.onnx`` file to write (parent folders are created).
        dynamic_batch: mark dim 0 of every input as a dynamic ``batch`` axis.
        opset_version: ONNX opset (None: the exporter's default).
        check: compare onnxruntime with PyTorch on ``example_inputs`` (needs onnxruntime); a
            mismatch beyond ``ONNX_ATOL + ONNX_RTOL·|y|`` raises and writes nothing.
        input_names: ONNX input names (default ``input``, ``input_1``, ...).
        int8: None (default: the fp32 file), or calibration inputs — a tensor ``(N, ...)`` shaped
            like ``example_inputs`` or an iterable of batches, e.g. a few hundred normalized
            *training* images (never test images) — to write a static int8 QDQ file instead, with
            the defaults of :func:`export_int8` (BatchNorm folded, per-channel 7-bit-range int8
            weights, uint8 activations; checked by onnxruntime against the fp32 export).

    A factorized model (training form) is exported as it is, its layers in
    ``forward_mode="merged"`` (the product of the factors, then one matmul/conv) where they were
    ``"auto"``, since "auto" branches on the batch size; ``model`` itself is not changed. Export
    ``lorita.merge(model)`` for the smaller dense file with the same outputs. The exporter's known
    noise (torchvision notices, a pytree ``FutureWarning``) is silenced during the call only.

    Returns:
        ``(path, max |ort − torch|)`` (the difference is None when ``check=False``); with ``int8``,
        ``(path, max |int8 − fp32|)`` under onnxruntime on the calibration inputs (top-1 agreement
        logged; :func:`export_int8` returns the full :class:`~lorita.export_int8.Int8Report`).

    Raises:
        TypeError: bad ``model``/``example_inputs``.
        ValueError: the model fails on ``example_inputs`` when run eagerly (checked before
            exporting; the message names the input shapes and the model's error), missing optional
            packages, an export failure (first line of torch.onnx's message, colour codes
            stripped), a model too large for one file, or outputs that differ beyond the tolerance;
            with ``int8``, the errors of :func:`export_int8`.
    """
    if int8 is not None:
        report = export_int8(model, example_inputs, path, int8, dynamic_batch=dynamic_batch,
                             opset_version=opset_version, input_names=input_names)
        return report.path, report.max_abs_diff
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_tuple(example_inputs)
    _require("onnxscript")
    _require("onnx")
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if nbytes > _MAX_SINGLE_FILE_BYTES:
        raise ValueError(
            f"the model has {nbytes / 2**30:.1f} GiB of weights, over ONNX's 2 GiB single-file limit; call "
            f"torch.onnx.export(..., external_data=True) yourself"
        )
    path = Path(path)
    names = list(input_names) if input_names else ["input"] + [f"input_{i}" for i in range(1, len(inputs))]
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic = tuple({0: batch} if t.dim() > 0 else None for t in inputs)
    was_training = model.training
    model.eval()
    diff = None
    try:
        _check_runs(model, inputs)
        exported = _batch_independent(model)
        with atomic_path(path, suffix=".tmp.onnx") as tmp:
            try:
                with _quiet_exporter():
                    torch.onnx.export(
                        exported, inputs, tmp, dynamo=True, dynamic_shapes=dynamic, input_names=names,
                        opset_version=opset_version, external_data=False, verbose=False,
                    )
            except Exception as exc:  # torch.onnx raises many types; report one line and the cause
                raise ValueError(f"torch.onnx.export failed for {type(model).__name__}: {_one_line(exc)}") from exc
            if check:  # against the model as given (its own forward modes)
                diff, within = onnx_max_abs_diff(model, tmp, inputs)
                if not within:
                    raise ValueError(
                        f"onnxruntime and PyTorch disagree by up to {diff:.3g} (> {ONNX_ATOL:g} + "
                        f"{ONNX_RTOL:g}·|y|); {path} was not written"
                    )
    finally:
        model.train(was_training)
    logger.info("exported %s (max |ort - torch| = %s)", path, diff)
    return path, diff


def export_int8(
    model: nn.Module,
    example_inputs: Any,
    path: str | Path,
    calibration: Any,
    activations: str = "quint8",
    calibrate_method: str = "minmax",
    per_channel: bool = True,
    reduce_range: bool = True,
    batch_size: int = 64,
    min_agreement: float | None = None,
    check_samples: int = 512,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
    input_names: Sequence[str] | None = None,
) -> Int8Report:
    """Static post-training int8 export: fold BatchNorm, export fp32, quantize (QDQ), check, write.

    Steps: :func:`lorita.fold_batchnorm` on a copy of ``model`` (eval mode); :func:`export_onnx`
    of the folded model to a temp file (checked against PyTorch); onnxruntime's
    ``quant_pre_process`` + ``quantize_static`` (QDQ, per-channel int8 weights, activations
    calibrated on ``calibration``; see :mod:`lorita.export_int8`); then both files are run by
    onnxruntime on the first ``check_samples`` calibration samples and compared. The int8 file
    is written to ``path`` atomically only if that check passes.

    Args:
        model, example_inputs, dynamic_batch, opset_version, input_names: as :func:`export_onnx`.
        path: the int8 ``.onnx`` file to write.
        calibration: a tensor ``(N, ...)`` or an iterable of batches shaped like
            ``example_inputs`` except dim 0 (see :func:`~lorita.export_int8.calibration_batches`);
            use training images, never the test set. A few hundred samples are enough.
        activations: ``"quint8"`` (default; onnxruntime's fast U8S8 CPU kernels) or ``"qint8"``.
        calibrate_method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        per_channel, reduce_range: see :func:`~lorita.export_int8.quantize_onnx`.
        batch_size: calibration batch size when ``calibration`` is one tensor.
        min_agreement: refuse (write nothing) when the int8 top-1 agrees with fp32 on fewer than
            this fraction of the checked samples; None (default): report only, with a warning
            below 90%. Classifier outputs only. (An untrained model's near-tied logits flip
            easily: a random 4-class CNN on noise agreed on 83%; trained models 97–100%.)
        check_samples: how many calibration samples the check runs (at least one batch).

    Returns:
        :class:`~lorita.export_int8.Int8Report` (bytes on disk fp32 vs int8, both made compact
        the same way by :func:`~lorita.export_int8.strip_debug_metadata`; top-1 agreement;
        max ``|int8 − fp32|``); also logged at INFO.

    Raises:
        TypeError: bad ``model``/``example_inputs``. ValueError: onnxruntime or another optional
            package missing (says ``pip install 'lorita[onnx]'``), calibration batches of the wrong
            shape (one line naming the batch and the expected shape), an export or quantizer
            failure, or agreement below ``min_agreement``. ``model`` is exported in eval mode and
            left unchanged (BatchNorm is folded on a copy).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_tuple(example_inputs)
    _require("onnxruntime")
    batches = calibration_batches(calibration, inputs, batch_size)
    if not dynamic_batch and any(b[0].shape[0] != inputs[0].shape[0] for b in batches):
        raise ValueError(
            f"`dynamic_batch`=False fixes the batch size to {inputs[0].shape[0]}: give calibration batches of "
            f"that size, or keep `dynamic_batch`=True"
        )
    was_training = model.training
    model.eval()
    try:
        folded = fold_batchnorm(model)
    finally:
        model.train(was_training)
    check = first_samples(batches, check_samples)
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="lorita-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(folded, inputs, fp32, dynamic_batch, opset_version, True, input_names)
        strip_debug_metadata(fp32)  # as the int8 file, so their bytes compare weights and graph
        with atomic_path(path, suffix=".tmp.onnx") as out:
            quantize_onnx(fp32, out, batches, activations, calibrate_method, per_channel, reduce_range)
            cmp = compare_onnx(fp32, out, check)
            agree = cmp["agreement"]
            if min_agreement is not None and agree is not None and agree < min_agreement:
                raise ValueError(
                    f"the int8 model's top-1 agrees with fp32 on only {agree:.1%} of {cmp['n']} calibration samples "
                    f"(< {min_agreement:.0%}); {path} was not written. Calibrate on more (and more typical) "
                    f"samples, or keep the fp32 model"
                )
            report = Int8Report(
                path, file_bytes(fp32), file_bytes(out), agree, cmp["max_abs_diff"], cmp["output_scale"], cmp["n"],
                sum(b[0].shape[0] for b in batches), activations, calibrate_method, reduce_range,
            )
    log_report(report)
    return report

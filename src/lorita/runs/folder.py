"""The run-folder contract: artefact names (:class:`RunFolder`), loading a trained run
(:func:`load_run`), the model spec that rebuilds a run's model, and the result rows of reports.

Layout of a training folder written by ``lorita train``::

    config.json         TrainConfig (rebuilds the model)
    metrics.jsonl       one JSON line per epoch: train loss/acc, val loss/acc, lr, seconds
    model.safetensors   final weights in training form (factorized) + lorita manifest
                        (metadata: ``config`` and ``build``, the model spec; older runs lack ``build``)
    resume.pt           last epoch's model/optimizer/scheduler state (for resuming)
    summary.json        final val accuracy, params, wall time
    plain/              only with ``factorize_at = K``: the K plain epochs, itself a training
                        folder (depth 1); the folder above holds the late phase (epochs K+1..)
                        and records the user's config

A compressed folder (``lorita compress``, default ``RUN/compressed`` or ``RUN/searched``) holds
``merged.safetensors``, ``low_rank.safetensors`` (both recording ``build``), ``ranks.json``,
``report.json``, ``report.md`` and optionally ``search_trace.json`` and ``low_rank_int8.pt``;
a sweep folder (default ``RUN/sweep-POLICY``) holds ``sweep.json``, ``sweep.md``, ``sweep.png``.

Selection rules: nothing is chosen on the test split; test accuracy is only reported. This
module is imported by every workflow module (train, compress, sweep, report, demo, export) and
imports none of them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from lorita import io
from lorita.counting import count_macs
from lorita.data import DataSplits, TensorLoader, load_dataset, make_transform
from lorita.engine import evaluate
from lorita.models import build_model, default_targets
from lorita.runs.config import TrainConfig
from lorita.surgery import merge, to_low_rank, weight_layers

__all__ = [
    "EVAL_BATCH_SIZE",
    "RunFolder",
    "check_device",
    "load_data",
    "make_loaders",
    "build_info",
    "build_run_model",
    "load_dense_weights",
    "load_run",
    "LoadedRun",
    "evaluate_point",
    "weight_params",
    "model_row",
    "remove_stale",
]

logger = logging.getLogger(__name__)

_BUILD_KEYS = {"model", "model_kwargs", "input_shape"}


@dataclass(frozen=True)
class RunFolder:
    """One lorita folder and the names of its artefacts (the only place they are spelled).

    ``RunFolder(path) / RunFolder.CONFIG`` is a path; :meth:`default_out` gives the default
    output folder of each command; :meth:`build_spec` / :meth:`build_model` rebuild the model a
    file records (the ``"build"`` key of its manifest metadata).
    """

    path: Path

    CONFIG: ClassVar[str] = "config.json"
    METRICS: ClassVar[str] = "metrics.jsonl"
    MODEL: ClassVar[str] = "model.safetensors"
    RESUME: ClassVar[str] = "resume.pt"
    SUMMARY: ClassVar[str] = "summary.json"
    TRAIN_FILES: ClassVar[tuple[str, ...]] = (CONFIG, METRICS, MODEL, RESUME, SUMMARY)
    MERGED: ClassVar[str] = "merged.safetensors"
    LOW_RANK: ClassVar[str] = "low_rank.safetensors"
    INT8: ClassVar[str] = "low_rank_int8.pt"
    RANKS: ClassVar[str] = "ranks.json"
    REPORT: ClassVar[str] = "report.json"
    REPORT_MD: ClassVar[str] = "report.md"
    TRACE: ClassVar[str] = "search_trace.json"
    SWEEP: ClassVar[str] = "sweep.json"
    SWEEP_MD: ClassVar[str] = "sweep.md"
    SWEEP_PNG: ClassVar[str] = "sweep.png"

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def is_trained(self) -> bool:
        """A ``lorita train`` folder: ``config.json`` and ``model.safetensors``."""
        return (self / self.CONFIG).is_file() and (self / self.MODEL).is_file()

    def is_compressed(self) -> bool:
        """A ``lorita compress`` folder: ``low_rank.safetensors`` or ``merged.safetensors``."""
        return (self / self.LOW_RANK).is_file() or (self / self.MERGED).is_file()

    def default_out(self, command: str, policy: str | None = None) -> Path:
        """Default output folder of ``command`` run on this (training) folder: ``compressed``
        (``"compress"``), ``searched`` (``"search"``), ``sweep-POLICY`` (``"sweep"``).

        Raises:
            ValueError: another ``command``.
        """
        names = {"compress": "compressed", "search": "searched", "sweep": f"sweep-{policy}"}
        if command not in names:
            raise ValueError(f"`command` must be one of {sorted(names)}, got {command!r}")
        return self / names[command]

    def build_spec(self, name: str) -> dict[str, Any] | None:
        """The ``{"model", "model_kwargs", "input_shape"}`` recorded by the file ``name``, or None
        (a file written by an older lorita)."""
        build = io.read_manifest(self / name).get("metadata", {}).get("build")
        return build if isinstance(build, dict) and _BUILD_KEYS <= set(build) else None

    def build_model(self, name: str) -> tuple[nn.Module, tuple[int, ...]]:
        """Load the file ``name`` into the model its manifest records: ``(model, input shape)``.

        Raises:
            ValueError: the file records no model spec (re-run ``lorita compress`` on the run);
                errors of :func:`lorita.load`.
        """
        build = self.build_spec(name)
        if build is None:
            raise ValueError(
                f"{self / name} does not record how to rebuild its model (written by an older lorita); run "
                f"`lorita compress` again on the training run"
            )
        model = build_model(build["model"], **build["model_kwargs"])
        return io.load(model, self / name), tuple(int(s) for s in build["input_shape"])


def check_device(device: str) -> None:
    """Raise a clear ``ValueError`` for a device string torch cannot use here (e.g. ``cuda``
    on a machine without CUDA), before any data is loaded."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"`device` {device!r} is not a valid torch device ({exc}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"`device` is {device!r} but CUDA is not available on this machine; use `device='cpu'`")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"`device` {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")


def load_data(cfg: TrainConfig) -> DataSplits:
    """Load ``cfg.dataset`` from ``cfg.resolved_data_dir()`` with the fixed validation split."""
    data = load_dataset(
        cfg.dataset, cfg.resolved_data_dir(), val_size=cfg.val_size, split_seed=cfg.split_seed, verify=cfg.verify
    )
    if cfg.limit_train is not None:
        data.train_x, data.train_y = data.train_x[: cfg.limit_train], data.train_y[: cfg.limit_train]
    return data


#: Evaluation batch size (images per forward pass) of val/test loaders. Measured on CIFAR-10
#: ResNet-20, 5,000 images, 1 thread: batch 1000 spent as much system time as compute (10.2 s sys
#: vs 9.9 s user, 3.0 M page faults: its 65 MB activations exceed glibc's 32 MB mmap threshold, so
#: every buffer is mapped and unmapped anew); batch 256: 0.0 s sys, 7.6 s user.
EVAL_BATCH_SIZE = 256


def make_loaders(
    data: DataSplits, cfg: TrainConfig, eval_batch: int = EVAL_BATCH_SIZE, rank: int = 0, world_size: int = 1
) -> tuple[TensorLoader, TensorLoader, TensorLoader]:
    """(train, val, test) loaders; the train loader shuffles with ``cfg.seed`` (sharded for DDP);
    val/test batches hold ``eval_batch`` images (see :data:`EVAL_BATCH_SIZE`)."""
    train_tf = make_transform(data, train=True, augment=cfg.augment)
    eval_tf = make_transform(data, train=False, augment=False)
    train = TensorLoader(
        data.train_x, data.train_y, cfg.batch_size, train_tf, shuffle=True, drop_last=False,
        seed=cfg.seed, rank=rank, world_size=world_size,
    )
    val = TensorLoader(data.val_x, data.val_y, eval_batch, eval_tf)
    test = TensorLoader(data.test_x, data.test_y, eval_batch, eval_tf)
    return train, val, test


def _targets(cfg: TrainConfig) -> tuple[Any, Any]:
    t, x = default_targets(cfg.model)
    return (cfg.target_modules if cfg.target_modules is not None else t,
            cfg.exclude_modules if cfg.exclude_modules is not None else x)


def _model_kwargs(cfg: TrainConfig, data: DataSplits | None) -> dict[str, Any]:
    kw = dict(cfg.model_kwargs)
    if data is not None:
        kw.setdefault("num_classes", data.num_classes)
        if cfg.model == "fcn":
            kw.setdefault("in_features", math.prod(data.input_shape))
    return kw


def build_info(cfg: TrainConfig, data: DataSplits) -> dict[str, Any]:
    """What rebuilds a run's model without its data: ``{"model", "model_kwargs", "input_shape"}``
    (stored in the manifest metadata of ``lorita compress`` outputs)."""
    return {"model": cfg.model, "model_kwargs": _model_kwargs(cfg, data), "input_shape": list(data.input_shape)}


def remove_stale(out: Path, names: Sequence[str]) -> None:
    """Delete files an earlier command left in ``out`` that this one will not rewrite, so a folder
    never mixes artefacts of two runs (e.g. an int8 file of another model)."""
    for name in names:
        if (out / name).is_file():
            logger.info("removing stale %s", out / name)
            (out / name).unlink()


@dataclass
class LoadedRun:
    """A trained run, merged: ``dense`` has the reference architecture."""

    cfg: TrainConfig
    data: DataSplits
    dense: nn.Module
    val: TensorLoader
    test: TensorLoader
    example_inputs: torch.Tensor
    targets: tuple[Any, Any]
    device: str = "cpu"


def build_run_model(folder: RunFolder, cfg: TrainConfig, data: DataSplits | None) -> nn.Module:
    """The plain (dense) model of the training run in ``folder``: from ``cfg`` and ``data`` as
    training built it (so an edited ``config.json`` is checked against the weights), or, without
    ``data``, from the ``"build"`` spec its ``model.safetensors`` records (runs written before lorita
    recorded it fall back to ``cfg`` alone)."""
    build = None
    if data is None and (folder / RunFolder.MODEL).is_file():
        build = folder.build_spec(RunFolder.MODEL)
    if build is not None:
        return build_model(build["model"], **build["model_kwargs"])
    return build_model(cfg.model, **_model_kwargs(cfg, data))


def load_dense_weights(model: nn.Module, source: str | Path) -> nn.Module:
    """Fill the plain ``model`` (the architecture to train) with the dense weights of ``source``.

    ``source``: a run folder written by ``lorita train`` (its ``model.safetensors``, merged if it
    was factorized), a file written by :func:`lorita.save` (any form; merged), or a plain
    safetensors ``state_dict`` of the same architecture (``safetensors.torch.save_model``).
    Returns ``model`` with the weights (merged, dense), in place.

    Raises:
        FileNotFoundError: no such file/folder. ValueError: a folder that is no training run, or
            weights that do not fit the architecture (named by :mod:`lorita.io`).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(source)
    if path.is_dir():
        if not RunFolder(path).is_trained():
            raise ValueError(f"`init_from`={str(path)!r} is a folder without {RunFolder.MODEL}; pass a run folder "
                             f"written by `lorita train` or a .safetensors file")
        path = path / RunFolder.MODEL
    if not path.is_file():
        raise FileNotFoundError(f"`init_from`: no checkpoint at {path}; pass a run folder or a .safetensors file")
    try:
        io.read_manifest(path)
        has_manifest = True
    except ValueError as exc:
        if "no lorita manifest" not in str(exc):
            raise
        has_manifest = False
    if has_manifest:
        loaded = merge(io.load(model, path))
        model.load_state_dict(loaded.state_dict(), strict=True)
        return model
    try:
        load_model(model, str(path), strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"`init_from`: {path} does not fit {type(model).__name__} ({first}); pass weights "
                         f"of the same architecture (`model`, `model_kwargs`)") from None
    return model


def load_run(
    run_dir: str | Path,
    data_dir: str | None = None,
    data: DataSplits | None = None,
    device: str = "cpu",
    eval_batch_size: int = EVAL_BATCH_SIZE,
) -> LoadedRun:
    """Rebuild, load and merge a training folder; the merged model and example inputs go to
    ``device``, where every evaluation of the run then happens, ``eval_batch_size`` images per
    forward pass.

    Raises:
        FileNotFoundError / ValueError: missing or mismatched files, unusable device (named).
    """
    check_device(device)
    run = Path(run_dir)
    if not run.is_dir():
        if run.is_file():
            raise FileNotFoundError(
                f"{run} is a file; pass the run folder that holds it ({run.parent}), written by `lorita train`"
            )
        raise FileNotFoundError(f"run folder {run} does not exist; pass a folder written by `lorita train`")
    folder = RunFolder(run)
    cfg = TrainConfig.load(folder / RunFolder.CONFIG)
    if data_dir is not None:
        cfg.data_dir = data_dir
    data = data if data is not None else load_data(cfg)
    model = io.load(build_run_model(folder, cfg, data), folder / RunFolder.MODEL)
    dense = merge(model).eval().to(device)
    if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1:
        raise ValueError(f"`eval_batch_size` must be a positive integer, got {eval_batch_size!r}")
    _, val, test = make_loaders(data, cfg, eval_batch=eval_batch_size)
    example = torch.zeros((1, *data.input_shape), device=device)
    return LoadedRun(cfg, data, dense, val, test, example, _targets(cfg), device)


def weight_params(model: nn.Module, names: Sequence[str]) -> int:
    """Weight params (no biases) of the named layers in their current form: both thin layers of a
    low-rank layer, every factor of a factorized one, else the weight."""
    mods = dict(model.named_modules())
    total = 0
    for n in names:
        m = mods[n]
        if hasattr(m, "first") and hasattr(m, "second"):
            total += m.first.weight.numel() + m.second.weight.numel()
        elif hasattr(m, "factors"):
            total += sum(f.numel() for f in m.factors)
        else:
            total += m.weight.numel()
    return total


def model_row(
    run: LoadedRun,
    model: nn.Module,
    label: str,
    ranks: dict[str, int] | None = None,
    with_test: bool = True,
    quantized: bool = False,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy and costs of any model built from ``run`` (the row schema of sweeps and reports).

    Keys: label, val_acc, test_acc, params, macs, weight_params, weight_params_frac, params_frac,
    macs_frac, ranks. MACs per sample. ``weight_params`` counts the targeted layers only.
    ``quantized=True``: only the accuracies are measured (packed int8 weights are invisible to
    the counters; :func:`lorita.search_pipeline.add_int8` fills in the float model's counts).
    ``device``: where to evaluate (default: the run's device). ``progress``: a bar per evaluation.
    """
    device = device or run.device
    names = [n for n, _ in weight_layers(run.dense, *run.targets)]
    dense_cost = count_macs(run.dense, run.example_inputs)
    cost = dense_cost if model is run.dense or quantized else count_macs(model, run.example_inputs)
    dense_w = weight_params(run.dense, names)
    w = weight_params(model, names) if not quantized else None
    return {
        "label": label,
        "val_acc": evaluate(model, run.val, device, progress=progress, desc=f"{label}: val")["acc"],
        "test_acc": evaluate(model, run.test, device, progress=progress, desc=f"{label}: test")["acc"]
        if with_test else None,
        "params": cost.total_params,
        "macs": cost.total_macs,
        "weight_params": w,
        "weight_params_frac": None if w is None else w / dense_w,
        "params_frac": cost.total_params / dense_cost.total_params,
        "macs_frac": cost.total_macs / dense_cost.total_macs,
        "ranks": ranks,
    }


def evaluate_point(
    run: LoadedRun, ranks: dict[str, int] | None, label: str, with_test: bool = True
) -> tuple[dict[str, Any], nn.Module]:
    """Row (see :func:`model_row`) and model of the low-rank model at ``ranks`` (None: dense)."""
    model = run.dense if ranks is None else to_low_rank(run.dense, ranks)
    return model_row(run, model, label, ranks, with_test), model

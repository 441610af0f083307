"""End-to-end runs behind the CLI: train, compress, sweep (files in, files out).

Layout of a training folder written by :func:`train_run`::

    config.json         TrainConfig (rebuilds the model)
    metrics.jsonl       one JSON line per epoch: train loss/acc, val loss/acc, lr, seconds
    model.safetensors   final weights in training form (factorized) + lorita manifest
    resume.pt           last epoch's model/optimizer/scheduler state (for --resume)
    summary.json        final val accuracy, params, wall time

Selection rules: nothing is chosen on the test split; test accuracy is only reported.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lorita import distributed, io
from lorita.counting import count_macs, count_params
from lorita.data import DataSplits, TensorLoader, load_dataset
from lorita.engine import evaluate, make_optimizer, make_scheduler, train_one_epoch
from lorita.models import build_model, default_targets
from lorita.optim import param_groups
from lorita.ranks.policies import parse_policy, select_ranks
from lorita.runs.config import TrainConfig
from lorita.surgery import factorize, merge, to_low_rank, weight_layers

__all__ = [
    "seed_everything",
    "check_device",
    "load_data",
    "make_loaders",
    "build_training_model",
    "build_info",
    "train_run",
    "load_run",
    "LoadedRun",
    "evaluate_point",
    "compress_run",
    "sweep_run",
    "weight_params",
    "model_row",
    "DEFAULT_POINTS",
]

logger = logging.getLogger(__name__)

DEFAULT_POINTS: dict[str, list[float]] = {
    "energy": [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999],
    "ratio": [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0],
    "global": [0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.0],
    "params": [0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5],
    "macs": [0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5],
}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs (explicit; lorita never seeds behind your back)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig) -> DataSplits:
    """Load ``cfg.dataset`` from ``cfg.resolved_data_dir()`` with the fixed validation split."""
    data = load_dataset(
        cfg.dataset, cfg.resolved_data_dir(), val_size=cfg.val_size, split_seed=cfg.split_seed, verify=cfg.verify
    )
    if cfg.limit_train is not None:
        data.train_x, data.train_y = data.train_x[: cfg.limit_train], data.train_y[: cfg.limit_train]
    return data


def make_loaders(
    data: DataSplits, cfg: TrainConfig, eval_batch: int = 1000, rank: int = 0, world_size: int = 1
) -> tuple[TensorLoader, TensorLoader, TensorLoader]:
    """(train, val, test) loaders; the train loader shuffles with ``cfg.seed`` (sharded for DDP)."""
    from lorita import data as data_mod

    train_tf = data_mod.make_transform(data, train=True, augment=cfg.augment)
    eval_tf = data_mod.make_transform(data, train=False, augment=False)
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


def build_training_model(cfg: TrainConfig, data: DataSplits | None = None) -> nn.Module:
    """The reference model of ``cfg``, factorized to ``cfg.depth`` on its default targets."""
    model = build_model(cfg.model, **_model_kwargs(cfg, data))
    t, x = _targets(cfg)
    return factorize(model, depth=cfg.depth, target_modules=t, exclude_modules=x, init=cfg.init, inplace=True)


def _loss_fn(cfg: TrainConfig):
    if cfg.label_smoothing:
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    return F.cross_entropy


def _write_json(path: Path, obj: Any) -> None:
    io.atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with io.atomic_path(path) as tmp:
        torch.save(obj, tmp)


def check_device(device: str) -> None:
    """Raise a clear ``ValueError`` for a device string torch cannot use here (e.g. ``cuda``
    on a machine without CUDA), before any data is loaded."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"`device` {device!r} is not a valid torch device ({exc}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"`device` is {device!r} but CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"`device` {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")


def train_run(
    cfg: TrainConfig,
    out_dir: str | Path,
    progress: bool = True,
    resume: bool = False,
    data: DataSplits | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` and write the folder described in the module docstring.

    Args:
        cfg: the run configuration.
        out_dir: output folder (created).
        progress: show tqdm bars.
        resume: continue from ``out_dir/resume.pt`` if present (same config required).
        data: already loaded splits of ``cfg.dataset`` (skips loading; ``limit_train`` not re-applied).
        overwrite: replace a run already in ``out_dir`` (without it, and without ``resume``, an
            existing run is an error rather than silently overwritten).

    Returns:
        The summary dict also written to ``summary.json``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the model trains with DistributedDataParallel: each
    process gets a disjoint shard of every epoch; rank 0 writes the files (bare-model keys, no
    ``module.`` prefix) after checking that all replicas hold identical weights.

    Raises:
        ValueError: resuming with a different config; ``out_dir`` is a file, or already holds a
            run and neither ``resume`` nor ``overwrite`` is set; data errors from the loaders.
    """
    _check_out_dir(Path(out_dir), resume, overwrite)
    ctx = distributed.setup(cfg.device)
    try:
        return _train_run(cfg, Path(out_dir), progress and ctx.is_main, resume, ctx, data)
    finally:
        distributed.teardown(ctx)


def remove_stale(out: Path, names: Sequence[str]) -> None:
    """Delete files an earlier command left in ``out`` that this one will not rewrite, so a folder
    never mixes artefacts of two runs (e.g. an int8 file of another model)."""
    for name in names:
        if (out / name).is_file():
            logger.info("removing stale %s", out / name)
            (out / name).unlink()


RUN_FILES = ("config.json", "metrics.jsonl", "model.safetensors", "resume.pt", "summary.json")


def _check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a file as the output folder, and an existing run unless resuming or overwriting."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose a folder path")
    if resume or overwrite or not out.is_dir():
        return
    found = [f for f in RUN_FILES if (out / f).exists()]
    if found:
        raise ValueError(
            f"{out} already holds a training run ({', '.join(found)}); pass --resume to continue it, "
            f"--overwrite to replace it, or choose another --out"
        )


def _train_run(
    cfg: TrainConfig, out: Path, progress: bool, resume: bool, ctx: distributed.DistContext,
    data: DataSplits | None,
) -> dict[str, Any]:
    if resume and (out / "config.json").is_file():
        old = TrainConfig.load(out / "config.json")
        if old.to_dict() != cfg.to_dict():
            diff = {k: (v, cfg.to_dict()[k]) for k, v in old.to_dict().items() if cfg.to_dict()[k] != v}
            raise ValueError(f"--resume with a different config than {out / 'config.json'}: {diff}")
    check_device(cfg.device)
    if cfg.amp and not cfg.device.startswith("cuda"):
        logger.warning("--amp (bf16 autocast) applies on CUDA only; training %s in float32", cfg.device)
    seed_everything(cfg.seed)
    data = data if data is not None else load_data(cfg)
    train, val, _ = make_loaders(data, cfg, rank=ctx.rank, world_size=ctx.world_size)
    model = build_training_model(cfg, data).to(ctx.device)
    net = distributed.wrap(model, ctx)  # the model itself unless launched by torchrun
    opt = make_optimizer(cfg.optimizer, param_groups(model, cfg.weight_decay, cfg.decay), cfg.lr, cfg.momentum)
    steps = cfg.epochs * len(train)
    sched = make_scheduler(cfg.scheduler, opt, steps, int(cfg.warmup_epochs * len(train)))
    amp_dtype = torch.bfloat16 if cfg.amp and cfg.device.startswith("cuda") else None
    loss_fn = _loss_fn(cfg)
    start_epoch, history = 0, []
    elapsed = 0.0
    if resume and (out / "resume.pt").is_file():
        state = torch.load(out / "resume.pt", map_location=ctx.device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, elapsed = int(state["epoch"]) + 1, float(state.get("elapsed", 0.0))
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        history = history[:start_epoch]
        logger.info("resuming %s at epoch %d", out, start_epoch)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)  # only once data and model are known to be good
        _write_json(out / "config.json", cfg.to_dict())
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train.set_epoch(epoch)
        tr = train_one_epoch(
            net, train, opt, ctx.device, loss_fn, sched, progress=progress,
            desc=f"epoch {epoch + 1}/{cfg.epochs} (depth {cfg.depth})", amp_dtype=amp_dtype,
        )
        tr = distributed.all_reduce_mean(tr, ctx)
        va = evaluate(model, val, ctx.device) if len(data.val_y) else {"loss": float("nan"), "acc": float("nan")}
        dt = time.perf_counter() - t0
        elapsed += dt
        row = {
            "epoch": epoch + 1, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"],
            "val_acc": va["acc"], "lr": opt.param_groups[0]["lr"], "seconds": dt,
        }
        history.append(row)
        logger.info("epoch %d: train %.4f/%.4f val %.4f", epoch + 1, tr["loss"], tr["acc"], va["acc"])
        if not ctx.is_main:
            continue
        io.atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        _atomic_torch_save(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": epoch, "elapsed": elapsed},
            out / "resume.pt",
        )
    distributed.check_replicas_equal(model, ctx)
    model_cpu = model.to("cpu")
    if not ctx.is_main:
        return {"rank": ctx.rank, "world_size": ctx.world_size}
    io.save(model_cpu, out / "model.safetensors", metadata={"config": cfg.to_dict()})
    final_val = history[-1]["val_acc"] if history else evaluate(model_cpu, val)["acc"]
    summary = {
        "depth": cfg.depth,
        "weight_decay": cfg.weight_decay,
        "epochs": cfg.epochs,
        "val_acc": final_val,
        "train_params": count_params(model_cpu).total_params,
        "wall_seconds": elapsed,
        "world_size": ctx.world_size,
    }
    _write_json(out / "summary.json", summary)
    return summary


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


def load_run(
    run_dir: str | Path, data_dir: str | None = None, data: DataSplits | None = None, device: str = "cpu"
) -> LoadedRun:
    """Rebuild, load and merge a training folder; the merged model and example inputs go to
    ``device``, where every evaluation of the run then happens.

    Raises:
        FileNotFoundError / ValueError: missing or mismatched files, unusable device (named).
    """
    check_device(device)
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; pass a folder written by `lorita train`")
    cfg = TrainConfig.load(run / "config.json")
    if data_dir is not None:
        cfg.data_dir = data_dir
    data = data if data is not None else load_data(cfg)
    model = build_model(cfg.model, **_model_kwargs(cfg, data))
    model = io.load(model, run / "model.safetensors")
    dense = merge(model).eval().to(device)
    _, val, test = make_loaders(data, cfg)
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
) -> dict[str, Any]:
    """Accuracy and costs of any model built from ``run`` (the row schema of sweeps and reports).

    Keys: label, val_acc, test_acc, params, macs, weight_params, weight_params_frac, params_frac,
    macs_frac, ranks. MACs per sample. ``weight_params`` counts the targeted layers only.
    ``quantized=True``: only the accuracies are measured (packed int8 weights are invisible to
    the counters; :func:`lorita.search_pipeline.add_int8` fills in the float model's counts).
    ``device``: where to evaluate (default: the run's device).
    """
    device = device or run.device
    names = [n for n, _ in weight_layers(run.dense, *run.targets)]
    dense_cost = count_macs(run.dense, run.example_inputs)
    cost = dense_cost if model is run.dense or quantized else count_macs(model, run.example_inputs)
    dense_w = weight_params(run.dense, names)
    w = weight_params(model, names) if not quantized else None
    return {
        "label": label,
        "val_acc": evaluate(model, run.val, device)["acc"],
        "test_acc": evaluate(model, run.test, device)["acc"] if with_test else None,
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


def compress_run(
    run_dir: str | Path, policy: str, out_dir: str | Path, data_dir: str | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """One-shot compression of a trained run with a policy string (``energy:0.99`` ...).

    Writes ``merged.safetensors`` (dense, loads into the plain model class), ``ranks.json``,
    ``low_rank.safetensors`` (+ manifest), ``report.json`` and ``report.md`` to ``out_dir``.
    """
    run = load_run(run_dir, data_dir, device=device)
    pol = parse_policy(policy, example_inputs=run.example_inputs)
    ranks = select_ranks(run.dense, pol, *run.targets)
    out = Path(out_dir)  # created only once the inputs are known to be good
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out, ("low_rank_int8.pt", "search_trace.json"))  # from an earlier run into this folder
    dense_row, _ = evaluate_point(run, None, "dense (merged)")
    low_row, low = evaluate_point(run, ranks, f"low-rank ({policy})")
    build = build_info(run.cfg, run.data)  # lets `lorita export OUT` rebuild the model without the data
    io.save(run.dense, out / "merged.safetensors", metadata={"run": str(run_dir), "build": build})
    io.save(low, out / "low_rank.safetensors", metadata={"run": str(run_dir), "policy": policy, "build": build})
    _write_json(out / "ranks.json", ranks)
    layers = count_macs(low, run.example_inputs)
    report = {"run": str(run_dir), "policy": policy, "dense": dense_row, "low_rank": low_row,
              "layers": layers.to_dict()}
    _write_json(out / "report.json", report)
    from lorita.runs.markdown import compress_markdown

    io.atomic_write_text(out / "report.md", compress_markdown(report, layers.table()))
    return report


def sweep_run(
    run_dir: str | Path,
    policy_kind: str,
    points: Sequence[float] | None,
    out_dir: str | Path,
    data_dir: str | None = None,
    progress: bool = True,
    run: LoadedRun | None = None,
    search_tolerances: Sequence[float] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Accuracy vs cost for many points of one policy kind from one trained model.

    With ``search_tolerances`` (accuracy points), the greedy rank search (:func:`lorita.search`)
    also runs once per tolerance; its points go to ``search_points`` and onto the same plot.
    Writes ``sweep.json``, ``sweep.md`` and ``sweep.png`` to ``out_dir``.
    """
    from tqdm.auto import tqdm

    if policy_kind not in DEFAULT_POINTS and policy_kind != "rank":
        raise ValueError(f"unknown policy kind {policy_kind!r}; choose one of {sorted(DEFAULT_POINTS) + ['rank']}")
    pts = list(points) if points else DEFAULT_POINTS.get(policy_kind, [])
    if not pts:
        raise ValueError(f"give --points for policy {policy_kind!r}")
    run = run or load_run(run_dir, data_dir, device=device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dense_row, _ = evaluate_point(run, None, "dense")
    rows = []
    for p in tqdm(pts, desc=f"sweep {policy_kind}", disable=not progress, leave=False):
        text = f"{policy_kind}:{int(p) if policy_kind == 'rank' else p}"
        pol = parse_policy(text, example_inputs=run.example_inputs)
        try:
            ranks = select_ranks(run.dense, pol, *run.targets)
        except ValueError as exc:  # an infeasible budget is a point we cannot reach, not a crash
            logger.warning("sweep: %s skipped: %s", text, exc)
            continue
        row, _ = evaluate_point(run, ranks, text)
        row["point"] = p
        rows.append(row)
    result = {"run": str(run_dir), "policy": policy_kind, "depth": run.cfg.depth,
              "weight_decay": run.cfg.weight_decay, "dense": dense_row, "points": rows}
    series, labels = [result], [f"depth {run.cfg.depth}"]
    if search_tolerances:
        from lorita.search_pipeline import search_points

        result["search_points"] = search_points(run, search_tolerances, progress=progress)
        series.append({"dense": dense_row, "points": result["search_points"]})
        labels = [f"depth {run.cfg.depth}, {policy_kind}", f"depth {run.cfg.depth}, greedy search"]
    _write_json(out / "sweep.json", result)
    from lorita.runs.markdown import sweep_markdown
    from lorita.runs.plots import plot_sweeps

    md = sweep_markdown(result)
    if search_tolerances:
        md += "\n" + sweep_markdown({**result, "policy": "greedy search (tolerance, points)",
                                     "points": result["search_points"]})
    io.atomic_write_text(out / "sweep.md", md)
    plot_sweeps(series, out / "sweep.png", labels=labels)
    return result

"""``lorita train``: train a factorized reference model and write a training folder
(layout: :mod:`lorita.runs.folder`). Nothing is chosen on the test split.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lorita import distributed, io
from lorita._files import atomic_torch_save, write_json
from lorita.counting import count_params
from lorita.data import DataSplits
from lorita.engine import evaluate, make_optimizer, make_scheduler, train_one_epoch
from lorita.models import DEFAULT_CFGS, build_model
from lorita.optim import param_groups
from lorita.runs.config import TrainConfig
from lorita.runs.folder import (
    RunFolder,
    _model_kwargs,
    _targets,
    build_info,
    check_device,
    load_data,
    load_dense_weights,
    make_loaders,
)
from lorita.surgery import factorize

__all__ = ["seed_everything", "build_training_model", "train_run", "PLAIN_DIR"]

#: Sub-folder holding the plain (depth 1) phase of a ``factorize_at`` run: a complete training folder.
PLAIN_DIR = "plain"

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs (explicit; lorita never seeds behind your back)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_training_model(cfg: TrainConfig, data: DataSplits | None = None) -> nn.Module:
    """The reference model of ``cfg``, factorized to ``cfg.depth`` on its default targets.

    With ``cfg.init_from`` (a run folder or safetensors file) the plain model first takes those
    dense weights (:func:`lorita.runs.folder.load_dense_weights`); ``cfg.init`` then says how they
    are spread over the factors ("balanced" or "preserve": the product equals them at step 0).

    Raises:
        ValueError: ``init_from`` with ``init='default'`` (which would discard the weights), or
            weights that do not fit the model.
    """
    model = build_model(cfg.model, **_model_kwargs(cfg, data))
    if cfg.init_from is not None:
        if cfg.init == "default" and cfg.depth > 1:
            raise ValueError("`init`='default' draws fresh factors and would discard the weights of `init_from`; "
                             "use `init`='balanced' or 'preserve'")
        load_dense_weights(model, cfg.init_from)
    t, x = _targets(cfg)
    return factorize(
        model, depth=cfg.depth, target_modules=t, exclude_modules=x, init=cfg.init, inplace=True,
        init_scale=cfg.init_scale, factor_side=cfg.factor_side,
    )


def _loss_fn(cfg: TrainConfig):
    if cfg.label_smoothing:
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    return F.cross_entropy


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
    if cfg.factorize_at:
        _check_out_dir(Path(out_dir) / PLAIN_DIR, resume, overwrite)
    ctx = distributed.setup(cfg.device)
    try:
        if not cfg.factorize_at:
            return _train_run(cfg, Path(out_dir), progress and ctx.is_main, resume, ctx, data)
        return _train_late(cfg, Path(out_dir), progress and ctx.is_main, resume, ctx, data)
    finally:
        distributed.teardown(ctx)


def _train_late(
    cfg: TrainConfig, out: Path, progress: bool, resume: bool, ctx: distributed.DistContext,
    data: DataSplits | None,
) -> dict[str, Any]:
    """``cfg.factorize_at`` epochs plain into ``out/plain``, then the rest at ``cfg.depth`` into
    ``out``: one learning-rate schedule over ``cfg.epochs`` (the late phase starts where the plain
    one stopped, without a second warm-up; its optimizer state starts fresh, the parameters being
    new)."""
    k = cfg.factorize_at
    if resume and _check_resumable(cfg, out):
        logger.info("%s is already finished; nothing to resume", out)
        return json.loads((out / RunFolder.SUMMARY).read_text())
    data = data if data is not None else load_data(cfg)
    plain = dataclasses.replace(cfg, depth=1, epochs=k, factorize_at=0)
    first = _train_run(plain, out / PLAIN_DIR, progress, resume, ctx, data, schedule_epochs=cfg.epochs)
    distributed.barrier(ctx)  # rank 0 has written the plain model that every rank reads next
    late = dataclasses.replace(cfg, epochs=cfg.epochs - k, factorize_at=0, init_from=str(out / PLAIN_DIR))
    summary = _train_run(late, out, progress, resume, ctx, data, record=cfg, epoch_offset=k,
                         schedule_epochs=cfg.epochs)
    if ctx.is_main and "wall_seconds" in first:
        summary = {**summary, "wall_seconds": summary["wall_seconds"] + first["wall_seconds"],
                   "plain_wall_seconds": first["wall_seconds"], "plain_val_acc": first["val_acc"]}
        write_json(out / RunFolder.SUMMARY, summary)
    return summary


def _check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a file as the output folder, and an existing run unless resuming or overwriting."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"`out_dir` {out} is a file, not a folder; choose a folder path")
    if resume or overwrite or not out.is_dir():
        return
    found = [f for f in RunFolder.TRAIN_FILES if (out / f).exists()]
    if found:
        raise ValueError(
            f"{out} already holds a training run ({', '.join(found)}); pass `resume=True` to continue it, "
            f"`overwrite=True` to replace it, or choose another `out_dir`"
        )


def _train_run(
    cfg: TrainConfig, out: Path, progress: bool, resume: bool, ctx: distributed.DistContext,
    data: DataSplits | None, record: TrainConfig | None = None, epoch_offset: int = 0,
    schedule_epochs: int | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``out``. For the phases of ``factorize_at``: ``record`` (default ``cfg``)
    is the config written to and checked against ``config.json``; the learning-rate schedule spans
    ``schedule_epochs`` (default ``cfg.epochs``) and this phase joins it at epoch ``epoch_offset``,
    which also numbers the epochs."""
    record = record if record is not None else cfg
    if resume and _check_resumable(record, out):
        logger.info("%s is already finished; nothing to resume", out)
        return json.loads((out / RunFolder.SUMMARY).read_text())
    check_device(cfg.device)
    if cfg.amp and not cfg.device.startswith("cuda"):
        logger.warning("`amp` (bf16 autocast) applies on CUDA only; training %s in float32", cfg.device)
    seed_everything(cfg.seed)
    data = data if data is not None else load_data(cfg)
    train, val, _ = make_loaders(data, cfg, rank=ctx.rank, world_size=ctx.world_size)
    model = build_training_model(cfg, data).to(ctx.device)
    _check_accepts(model, cfg, data)
    net = distributed.wrap(model, ctx)  # the model itself unless launched by torchrun
    opt = make_optimizer(cfg.optimizer, param_groups(model, cfg.weight_decay, cfg.decay), cfg.lr, cfg.momentum)
    steps = (schedule_epochs or cfg.epochs) * len(train)
    sched = make_scheduler(cfg.scheduler, opt, steps, int(cfg.warmup_epochs * len(train)),
                           start_step=epoch_offset * len(train))
    amp_dtype = torch.bfloat16 if cfg.amp and cfg.device.startswith("cuda") else None
    loss_fn = _loss_fn(cfg)
    start_epoch, history = 0, []
    elapsed = 0.0
    if resume and (out / RunFolder.RESUME).is_file():
        state = _load_resume(out / RunFolder.RESUME, ctx.device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, elapsed = int(state["epoch"]) + 1, float(state.get("elapsed", 0.0))
        history = [json.loads(line) for line in (out / RunFolder.METRICS).read_text().splitlines() if line.strip()]
        history = history[:start_epoch]
        logger.info("resuming %s at epoch %d", out, start_epoch)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)  # only once data and model are known to be good
        write_json(out / RunFolder.CONFIG, record.to_dict())
    total = schedule_epochs or epoch_offset + cfg.epochs  # the whole run's epochs, plain phase included
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train.set_epoch(epoch_offset + epoch)  # the late phase continues the run's shuffle order
        tr = train_one_epoch(
            net, train, opt, ctx.device, loss_fn, sched, progress=progress,
            desc=f"epoch {epoch_offset + epoch + 1}/{total} (depth {cfg.depth})",
            amp_dtype=amp_dtype,
            clip_grad_norm=cfg.clip_grad_norm if cfg.depth > 1 else 0.0,  # the guard is for factor chains
        )
        tr = distributed.all_reduce_mean(tr, ctx)
        va = evaluate(model, val, ctx.device) if len(data.val_y) else {"loss": float("nan"), "acc": float("nan")}
        dt = time.perf_counter() - t0
        elapsed += dt
        row = {
            "epoch": epoch_offset + epoch + 1, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"],
            "val_acc": va["acc"], "lr": opt.param_groups[0]["lr"], "seconds": dt,
        }
        if "clipped" in tr:
            row["clipped_frac"] = tr["clipped"]
        history.append(row)
        logger.info("epoch %d: train loss %.4f acc %.4f, val acc %.4f", epoch_offset + epoch + 1,
                    tr["loss"], tr["acc"], va["acc"])
        if not ctx.is_main:
            continue
        io.atomic_write_text(out / RunFolder.METRICS, "".join(json.dumps(h) + "\n" for h in history))
        atomic_torch_save(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": epoch, "elapsed": elapsed},
            out / RunFolder.RESUME,
        )
    distributed.check_replicas_equal(model, ctx)
    model_cpu = model.to("cpu")
    if not ctx.is_main:
        return {"rank": ctx.rank, "world_size": ctx.world_size}
    io.save(model_cpu, out / RunFolder.MODEL, metadata={"config": record.to_dict(), "build": build_info(cfg, data)})
    final_val = history[-1]["val_acc"] if history else evaluate(model_cpu, val)["acc"]
    summary = {
        "depth": cfg.depth,
        "weight_decay": cfg.weight_decay,
        "epochs": record.epochs,
        "val_acc": final_val,
        "train_params": count_params(model_cpu).total_params,
        "wall_seconds": elapsed,
        "world_size": ctx.world_size,
    }
    write_json(out / RunFolder.SUMMARY, summary)
    (out / RunFolder.RESUME).unlink(missing_ok=True)  # finished: the model file holds everything needed
    return summary


def _check_resumable(cfg: TrainConfig, out: Path) -> bool:
    """Refuse to resume with a config that differs from the saved one (each value named); True
    when the run is already finished (its ``summary.json`` written and ``resume.pt`` removed)."""
    if not (out / RunFolder.CONFIG).is_file():
        return False
    old, new = TrainConfig.load(out / RunFolder.CONFIG).to_dict(), cfg.to_dict()
    diff = [f"{k}={new[k]!r} (saved: {v!r})" for k, v in old.items() if new.get(k) != v]
    if diff:
        raise ValueError(
            f"resuming {out} with a different config: {', '.join(diff)}; a resumed run keeps the config "
            f"saved in {RunFolder.CONFIG} — drop those values, or start a new run in another `out_dir`"
        )
    return (out / RunFolder.SUMMARY).is_file() and not (out / RunFolder.RESUME).is_file()


def _check_accepts(model: nn.Module, cfg: TrainConfig, data: DataSplits) -> None:
    """One forward pass on two training images before anything is written: a model that does not
    fit the dataset (e.g. a 3-channel CIFAR network on 1-channel MNIST) fails here, in one line
    that names the shape the model is built for and, where its constructor has them, the
    ``model_kwargs`` that adapt it (checked to work)."""
    x = data.normalize(data.train_x[:2]).to(next(model.parameters()).device)
    try:
        with torch.no_grad():
            model.eval()(x)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(_mismatch_message(model, cfg, data, x, first)) from None
    finally:
        model.train()


def _mismatch_message(model: nn.Module, cfg: TrainConfig, data: DataSplits, x: torch.Tensor, first: str) -> str:
    """Why ``model`` rejects the dataset's inputs and how to fix it (see :func:`_check_accepts`)."""
    shape = tuple(data.input_shape)
    built = DEFAULT_CFGS.get(cfg.model, {})
    own = [n for n, c in DEFAULT_CFGS.items() if c.get("dataset") == cfg.dataset]
    choose = f"choose a model built for {cfg.dataset}" + (f" ({', '.join(own)})" if own else "")
    if "input_shape" not in built or tuple(built["input_shape"]) == shape:
        return (f"model {cfg.model!r} does not accept {cfg.dataset} inputs of shape {shape}: {first}; "
                f"{choose} or adapt `model_kwargs`")
    head = (f"model {cfg.model!r} is built for {built.get('dataset')} inputs {tuple(built['input_shape'])} "
            f"and {cfg.dataset} gives {shape}")
    fix = _adapting_kwargs(model, cfg, data, x)
    if fix:
        return f"{head}: pass `model_kwargs` '{json.dumps(fix)}' to adapt it, or {choose}"
    return f"{head} ({first}); {choose}"


def _adapting_kwargs(model: nn.Module, cfg: TrainConfig, data: DataSplits, x: torch.Tensor) -> dict[str, int]:
    """The ``in_channels`` / ``image_size`` overrides (those the model's constructor takes, where the
    dataset differs from the model's ``DEFAULT_CFG`` shape) that make a fresh model accept ``x``;
    ``{}`` when none do."""
    params = inspect.signature(type(model).__init__).parameters
    c, h, w = (tuple(data.input_shape) + (None, None, None))[:3]
    bc, bh, _ = (tuple(DEFAULT_CFGS[cfg.model]["input_shape"]) + (None, None, None))[:3]
    fix: dict[str, int] = {}
    if "in_channels" in params and c is not None and c != bc:
        fix["in_channels"] = int(c)
    if "image_size" in params and h is not None and h == w and h != bh:
        fix["image_size"] = int(h)
    fix = {k: v for k, v in fix.items() if k not in cfg.model_kwargs}
    if not fix:
        return {}
    try:
        trial = build_model(cfg.model, **{**_model_kwargs(cfg, data), **fix}).eval()
        with torch.no_grad():
            trial(x.cpu())
    except (RuntimeError, ValueError):
        return {}
    return fix


def _load_resume(path: Path, device: Any) -> dict[str, Any]:
    """``resume.pt``, or one clear error if it is unreadable (truncated copy, disk full, other file)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, pickle errors, EOFError ... for a bad file
        raise ValueError(
            f"{path} is not a readable lorita checkpoint ({type(exc).__name__}); it may be truncated — "
            f"delete it to restart the run from epoch 0 (`overwrite=True`), or restore it from a copy"
        ) from None
    if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "epoch"} <= set(state):
        raise ValueError(f"{path} is not a lorita resume checkpoint (missing model/optimizer/scheduler/epoch)")
    return state

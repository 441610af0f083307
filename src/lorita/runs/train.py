"""``lorita train``: train a factorized reference model and write a training folder
(layout: :mod:`lorita.runs.folder`). Nothing is chosen on the test split.
"""

from __future__ import annotations

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
from lorita.models import build_model
from lorita.optim import param_groups
from lorita.runs.config import TrainConfig
from lorita.runs.folder import RunFolder, _model_kwargs, _targets, build_info, check_device, load_data, make_loaders
from lorita.surgery import factorize

__all__ = ["seed_everything", "build_training_model", "train_run"]

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs (explicit; lorita never seeds behind your back)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_training_model(cfg: TrainConfig, data: DataSplits | None = None) -> nn.Module:
    """The reference model of ``cfg``, factorized to ``cfg.depth`` on its default targets."""
    model = build_model(cfg.model, **_model_kwargs(cfg, data))
    t, x = _targets(cfg)
    return factorize(model, depth=cfg.depth, target_modules=t, exclude_modules=x, init=cfg.init, inplace=True)


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
    ctx = distributed.setup(cfg.device)
    try:
        return _train_run(cfg, Path(out_dir), progress and ctx.is_main, resume, ctx, data)
    finally:
        distributed.teardown(ctx)


def _check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a file as the output folder, and an existing run unless resuming or overwriting."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose a folder path")
    if resume or overwrite or not out.is_dir():
        return
    found = [f for f in RunFolder.TRAIN_FILES if (out / f).exists()]
    if found:
        raise ValueError(
            f"{out} already holds a training run ({', '.join(found)}); pass --resume to continue it, "
            f"--overwrite to replace it, or choose another --out"
        )


def _train_run(
    cfg: TrainConfig, out: Path, progress: bool, resume: bool, ctx: distributed.DistContext,
    data: DataSplits | None,
) -> dict[str, Any]:
    if resume and (out / RunFolder.CONFIG).is_file():
        old = TrainConfig.load(out / RunFolder.CONFIG)
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
    if resume and (out / RunFolder.RESUME).is_file():
        state = torch.load(out / RunFolder.RESUME, map_location=ctx.device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, elapsed = int(state["epoch"]) + 1, float(state.get("elapsed", 0.0))
        history = [json.loads(line) for line in (out / RunFolder.METRICS).read_text().splitlines() if line.strip()]
        history = history[:start_epoch]
        logger.info("resuming %s at epoch %d", out, start_epoch)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)  # only once data and model are known to be good
        write_json(out / RunFolder.CONFIG, cfg.to_dict())
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
    io.save(model_cpu, out / RunFolder.MODEL, metadata={"config": cfg.to_dict(), "build": build_info(cfg, data)})
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
    write_json(out / RunFolder.SUMMARY, summary)
    return summary

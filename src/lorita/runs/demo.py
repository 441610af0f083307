"""``lorita demo`` (the main job): train the FCN at several depths on MNIST, sweep a params
budget on each, and write a side-by-side report."""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from lorita import io
from lorita.runs.config import TrainConfig
from lorita.runs.folder import RunFolder, load_data, load_run
from lorita.runs.markdown import pct, side_by_side
from lorita.runs.report import report_runs
from lorita.runs.sweep import sweep_run
from lorita.runs.train import train_run

__all__ = ["run_demo", "smallest_within", "DEMO_RECIPE", "DEMO_BUDGETS"]

logger = logging.getLogger(__name__)


def _at_budget(sweep: dict[str, Any], budget: float) -> dict[str, Any] | None:
    return next((r for r in sweep["points"] if abs(r["point"] - budget) < 1e-12), None)


def smallest_within(sweep: dict[str, Any], tolerance: float = 1.0) -> dict[str, Any] | None:
    """The sweep point with the fewest weight params whose *validation* accuracy is within
    ``tolerance`` points of the dense model's (None if no point is)."""
    floor = sweep["dense"]["val_acc"] - tolerance / 100
    ok = [p for p in sweep["points"] if p["val_acc"] >= floor]
    return min(ok, key=lambda p: p["weight_params"]) if ok else None


# The demo's recipe (same for every depth): the paper's SGD recipe, short enough for 2 CPU cores.
DEMO_RECIPE: dict[str, Any] = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-3, "epochs": 20}


DEMO_BUDGETS = [0.02, 0.03, 0.035, 0.04, 0.045, 0.05, 0.06, 0.075, 0.1, 0.15, 0.2, 0.3]


def _train_and_sweep(cfg: TrainConfig, run_dir: Path, budgets: list[float], progress: bool,
                     data=None, threads: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One depth of the demo: train ``cfg`` into ``run_dir``, then sweep its params budgets.
    ``threads`` (a worker process): ``torch.set_num_threads`` first, since a spawned process starts
    with torch's default."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    data = data if data is not None else load_data(cfg)
    summary = train_run(cfg, run_dir, progress=progress, data=data, overwrite=True)
    sweep_dir = RunFolder(run_dir).default_out("sweep", "params")
    sweep = sweep_run(run_dir, "params", budgets, sweep_dir, progress=progress, run=load_run(run_dir, data=data))
    return summary, sweep


def _epochs_done(run_dir: Path, since: float) -> list[dict[str, Any]]:
    """The epochs a worker has finished so far (its ``metrics.jsonl``, if written after ``since``:
    a previous demo's file in the same folder does not count)."""
    path = run_dir / RunFolder.METRICS
    try:
        if path.stat().st_mtime < since:
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):  # not written yet, or replaced while reading
        return []


def _run_parallel(cfgs: list[TrainConfig], run_dirs: list[Path], budgets: list[float], progress: bool,
                  jobs: int, threads: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each depth in its own process (spawned, ``threads`` torch threads each), at most ``jobs`` at
    once; per-epoch lines and one tqdm bar per depth come from the workers' ``metrics.jsonl``."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    start = time.time()
    bars = [tqdm(total=c.epochs, desc=f"depth {c.depth}", position=i, disable=not progress, leave=False,
                 dynamic_ncols=True) for i, c in enumerate(cfgs)]
    seen = [0] * len(cfgs)
    ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock; spawn is the safe start
    try:
        with logging_redirect_tqdm(), ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures: list[Future] = [pool.submit(_train_and_sweep, c, d, budgets, False, None, threads)
                                     for c, d in zip(cfgs, run_dirs)]
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for i, (c, d) in enumerate(zip(cfgs, run_dirs)):
                    rows = _epochs_done(d, start)
                    for row in rows[seen[i]:]:
                        logger.info("depth %d epoch %d: train loss %.4f acc %.4f, val acc %.4f", c.depth,
                                    row["epoch"], row["train_loss"], row["train_acc"], row["val_acc"])
                    bars[i].update(max(0, len(rows) - seen[i]))
                    seen[i] = max(seen[i], len(rows))
            return [f.result() for f in futures]  # a worker's error is raised here, as it was raised there
    finally:
        for b in bars:
            b.close()


def run_demo(
    cfg: TrainConfig,
    out_dir: str | Path,
    depths: Sequence[int] = (1, 3),
    budgets: Sequence[float] | None = None,
    headline_budget: float = 0.10,
    tolerance: float = 1.0,
    progress: bool = True,
    jobs: int = 1,
    threads: int = 1,
) -> str:
    """Train one model per depth with identical settings, sweep params budgets, report.

    Writes ``depth<N>/`` run folders (with ``sweep-params``), ``report.md``, PNGs and
    ``demo.json`` to ``out_dir``.

    Args:
        jobs: depths trained at once, each in its own process with ``threads`` torch threads
            (``1``: one after the other in this process). The results are the same either way:
            every depth trains from its own seed.
        threads: torch threads per worker process (``jobs > 1`` only).

    Returns:
        The Markdown summary (also the head of ``report.md``).

    Raises:
        ValueError: ``jobs`` or ``threads`` < 1; errors of training or the sweep, as in
            :func:`lorita.runs.train.train_run`.
    """
    for name, value in (("jobs", jobs), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}`={value!r}: expected an integer >= 1")
    t0 = time.perf_counter()
    out = Path(out_dir)
    budgets = list(budgets) if budgets else DEMO_BUDGETS
    if headline_budget not in budgets:
        budgets = sorted(set(budgets) | {headline_budget})
    cfgs = [dataclasses.replace(cfg, depth=d) for d in depths]
    run_dirs = [out / f"depth{d}" for d in depths]
    data = load_data(cfg)  # also checks the data before any worker starts
    if jobs > 1 and len(depths) > 1:
        logger.info("demo: training depths %s, %d at a time (%d thread(s) each)",
                    ", ".join(map(str, depths)), min(jobs, len(depths)), threads)
        results = _run_parallel(cfgs, run_dirs, budgets, progress, min(jobs, len(depths)), threads)
    else:
        results = []
        for c, d in zip(cfgs, run_dirs):
            logger.info("demo: training depth %d", c.depth)
            results.append(_train_and_sweep(c, d, budgets, progress, data))
    summaries = [r[0] for r in results]
    sweeps = [r[1] for r in results]
    labels = [f"depth {d}" for d in depths]
    report_runs(run_dirs, out, labels=labels, policy="params", progress=progress, data=data, points=budgets)
    head = [
        f"## LoRITa demo: FCN {cfg.model_kwargs or '784-512-512-512-10'} on MNIST",
        "",
        f"Same recipe for every depth: {cfg.optimizer}, lr {cfg.lr:g}, weight decay {cfg.weight_decay:g} "
        f"(decay: {cfg.decay}), {cfg.epochs} epochs, batch {cfg.batch_size}, seed {cfg.seed}. "
        f"Ranks from ParamBudget on the merged weights; test accuracy only reported.",
        "",
    ]
    verdict = []
    for depth, sweep, summ in zip(depths, sweeps, summaries):
        dense = sweep["dense"]
        line = f"- depth {depth}: uncompressed test {pct(dense['test_acc'])}% (trained in {summ['wall_seconds']:.0f}s)"
        r = _at_budget(sweep, headline_budget)
        if r is not None:
            line += (f"; at ≤{headline_budget:.0%} of weight params test {pct(r['test_acc'])}% "
                     f"({100 * (r['test_acc'] - dense['test_acc']):+.2f} points)")
        small = smallest_within(sweep, tolerance)
        if small is not None:
            line += (f"; smallest budget within {tolerance:g} point on validation: {small['point']:.1%} "
                     f"({small['weight_params']:,} weights), test {pct(small['test_acc'])}% "
                     f"({100 * (small['test_acc'] - dense['test_acc']):+.2f})")
        verdict.append(line)
    deepest = max(range(len(depths)), key=lambda i: depths[i])
    anchor = smallest_within(sweeps[deepest], tolerance)
    if anchor is not None and len(depths) > 1:
        parts = []
        for depth, sweep in zip(depths, sweeps):
            r = _at_budget(sweep, anchor["point"])
            if r is not None:
                parts.append(f"depth {depth} {100 * (r['test_acc'] - sweep['dense']['test_acc']):+.2f}")
        verdict.append(
            f"- at {anchor['point']:.1%} of the weight params (the smallest budget where depth {depths[deepest]} "
            f"stays within {tolerance:g} point on validation), test accuracy change vs each depth's own dense "
            f"model: " + ", ".join(parts)
        )
    table = side_by_side(sweeps, labels)
    text = "\n".join(head + verdict + ["", table, ""])
    io.atomic_write_text(out / "summary.md", text)
    report = (out / "report.md").read_text()  # it holds the same table: prepend only the verdict
    io.atomic_write_text(out / "report.md", "\n".join(head + verdict + [""]) + "\n" + report)
    demo = {"config": cfg.to_dict(), "depths": list(depths), "budgets": budgets, "sweeps": sweeps,
            "summaries": summaries, "jobs": min(jobs, len(depths)), "threads": threads,
            "wall_seconds": round(time.perf_counter() - t0, 1)}
    io.atomic_write_text(out / "demo.json", json.dumps(demo, indent=2, sort_keys=True) + "\n")
    return text

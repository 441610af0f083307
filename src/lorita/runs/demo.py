"""``lorita demo`` (the main job): train the FCN at several depths on MNIST, sweep a params
budget on each, and write a side-by-side report."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
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


def run_demo(
    cfg: TrainConfig,
    out_dir: str | Path,
    depths: Sequence[int] = (1, 3),
    budgets: Sequence[float] | None = None,
    headline_budget: float = 0.10,
    tolerance: float = 1.0,
    progress: bool = True,
) -> str:
    """Train one model per depth with identical settings, sweep params budgets, report.

    Writes ``depth<N>/`` run folders (with ``sweep-params``), ``report.md``, PNGs and
    ``demo.json`` to ``out_dir``.

    Returns:
        The Markdown summary (also the head of ``report.md``).
    """
    out = Path(out_dir)
    budgets = list(budgets) if budgets else DEMO_BUDGETS
    if headline_budget not in budgets:
        budgets = sorted(set(budgets) | {headline_budget})
    run_dirs, sweeps, summaries = [], [], []
    data = load_data(cfg)
    for depth in depths:
        run_cfg = dataclasses.replace(cfg, depth=depth)
        run_dir = out / f"depth{depth}"
        logger.info("demo: training depth %d", depth)
        summaries.append(train_run(run_cfg, run_dir, progress=progress, data=data, overwrite=True))
        sweep_dir = RunFolder(run_dir).default_out("sweep", "params")
        sweeps.append(sweep_run(run_dir, "params", budgets, sweep_dir, progress=progress,
                                run=load_run(run_dir, data=data)))
        run_dirs.append(run_dir)
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
            "summaries": summaries}
    io.atomic_write_text(out / "demo.json", json.dumps(demo, indent=2, sort_keys=True) + "\n")
    return text

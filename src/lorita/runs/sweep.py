"""``lorita sweep``: accuracy vs cost for many points of one policy kind (and, optionally,
greedy-searched points) from one trained run; writes ``sweep.json``, ``sweep.md``, ``sweep.png``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lorita import io
from lorita._files import write_json
from lorita.ranks.policies import check_multiple, parse_policy, select_ranks
from lorita.ranks.search import GreedySearch
from lorita.runs.bench import latency_ratio
from lorita.runs.compress import multiple_meta, run_search
from lorita.runs.folder import EVAL_BATCH_SIZE, LoadedRun, RunFolder, evaluate_point, load_run, model_row
from lorita.runs.markdown import sweep_markdown
from lorita.runs.plots import plot_sweeps

__all__ = ["DEFAULT_POINTS", "sweep_run", "search_points"]

logger = logging.getLogger(__name__)

DEFAULT_POINTS: dict[str, list[float]] = {
    "energy": [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999],
    "ratio": [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0],
    "global": [0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.0],
    "params": [0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5],
    "macs": [0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5],
    "layer": [0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7],
}


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
    eval_batch_size: int = EVAL_BATCH_SIZE,
    latency_batch: int | None = None,
    multiple: int = 1,
    exclude_modules: Any = None,
    layer_cap: float | None = None,
) -> dict[str, Any]:
    """Accuracy vs cost for many points of one policy kind from one trained model.

    With ``search_tolerances`` (accuracy points), the greedy rank search (:func:`lorita.search`)
    also runs once per tolerance; its points go to ``search_points`` and onto the same plot.
    Writes ``sweep.json``, ``sweep.md`` and ``sweep.png`` to ``out_dir``. ``eval_batch_size``:
    images per evaluation forward pass. With ``latency_batch``,
    every point also gets ``latency_ratio``: measured dense time / its time (eager, 1 thread, that
    batch; :func:`lorita.runs.bench.latency_ratio`). ``multiple``: rank granularity of every point
    (``select_ranks(..., multiple=)``; e.g. 8 for ONNX Runtime on AVX2); points it makes infeasible are
    skipped with a warning. ``exclude_modules``: layers to keep dense at every point (regex or
    names; default: the run's own exclusions), e.g. a small classifier head under ``layer:F``.
    ``layer_cap``: with ``params``/``macs``, every point also caps each layer at that share of its
    own cost (``MacBudget(..., layer_cap=)``; points read ``macs:0.2,cap=0.5``).

    Raises:
        ValueError: unknown ``policy_kind``, no points, a bad ``latency_batch``, ``multiple`` or
            ``layer_cap`` (also: a cap with a kind other than params/macs).
    """
    if policy_kind not in DEFAULT_POINTS and policy_kind != "rank":
        raise ValueError(f"unknown policy kind {policy_kind!r}; choose one of {sorted(DEFAULT_POINTS) + ['rank']}")
    if latency_batch is not None and (isinstance(latency_batch, bool) or not isinstance(latency_batch, int)
                                      or latency_batch < 1):
        raise ValueError(f"`latency_batch` must be an int >= 1, got {latency_batch!r}")
    check_multiple(multiple)
    if layer_cap is not None and policy_kind not in ("params", "macs"):
        raise ValueError(f"`layer_cap` applies to params and macs sweeps, got policy kind {policy_kind!r}")
    pts = list(points) if points else DEFAULT_POINTS.get(policy_kind, [])
    if not pts:
        raise ValueError(f"give `points` for policy {policy_kind!r}")
    for p in pts:  # every point checked before the run is loaded
        try:
            parse_policy(_point_text(policy_kind, p, layer_cap), example_inputs=torch.zeros(1))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"`points`: {p!r} is not a valid {policy_kind} value ({exc})") from None
    run = run or load_run(run_dir, data_dir, device=device, eval_batch_size=eval_batch_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target, exclude = run.targets
    exclude = exclude_modules if exclude_modules is not None else exclude
    dense_row, _ = evaluate_point(run, None, "dense")
    rows = []
    for p in tqdm(pts, desc=f"sweep {policy_kind}", disable=not progress, leave=False):
        text = _point_text(policy_kind, p, layer_cap)
        pol = parse_policy(text, example_inputs=run.example_inputs)
        try:
            ranks = select_ranks(run.dense, pol, target, exclude, multiple=multiple)
        except ValueError as exc:  # an infeasible budget is a point we cannot reach, not a crash
            logger.warning("sweep: %s skipped: %s", text, exc)
            continue
        row, model = evaluate_point(run, ranks, text)
        row["point"] = p
        if latency_batch is not None:
            x = torch.randn((latency_batch, *run.example_inputs.shape[1:]), generator=torch.Generator().manual_seed(0))
            row["latency_ratio"] = latency_ratio(run.dense, model, x)
        rows.append(row)
    result = {"run": str(run_dir), "policy": policy_kind, "depth": run.cfg.depth,
              "weight_decay": run.cfg.weight_decay, "dense": dense_row, "points": rows,
              "requested_points": [float(p) for p in pts],  # infeasible ones are skipped in "points"
              "layer_cap": layer_cap, **multiple_meta(multiple)}
    series, labels = [result], [f"depth {run.cfg.depth}"]
    if search_tolerances:
        result["search_points"] = search_points(run, search_tolerances, GreedySearch(multiple=multiple),
                                                progress=progress, exclude_modules=exclude)
        series.append({"dense": dense_row, "points": result["search_points"]})
        labels = [f"depth {run.cfg.depth}, {policy_kind}", f"depth {run.cfg.depth}, greedy search"]
    write_json(out / RunFolder.SWEEP, result)
    md = sweep_markdown(result)
    if search_tolerances:
        md += "\n" + sweep_markdown({**result, "policy": "greedy search (tolerance, points)",
                                     "points": result["search_points"]})
    io.atomic_write_text(out / RunFolder.SWEEP_MD, md)
    plot_sweeps(series, out / RunFolder.SWEEP_PNG, labels=labels)
    return result


def _point_text(kind: str, point: float, layer_cap: float | None = None) -> str:
    cap = "" if layer_cap is None else f",cap={layer_cap:g}"
    return f"{kind}:{int(point) if kind == 'rank' else point}{cap}"


def search_points(
    run: LoadedRun,
    tolerances: Sequence[float],
    base: GreedySearch | None = None,
    progress: bool = True,
    exclude_modules: Any = None,
) -> list[dict[str, Any]]:
    """Searched points for ``lorita sweep``: one greedy search per tolerance (points), as rows."""
    base = base or GreedySearch()
    rows = []
    for tol in tolerances:
        res = run_search(run, dataclasses.replace(base, tolerance=float(tol)), exclude_modules=exclude_modules,
                         progress=progress)
        row = model_row(run, res.model, f"search:{tol:g}", res.ranks)
        row["point"] = float(tol)
        rows.append(row)
    return rows

"""``lorita report``: compare trained runs — spectra per layer, training curves, accuracy vs
weight params kept, side-by-side tables."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorita import io
from lorita.runs.config import TrainConfig
from lorita.runs.folder import EVAL_BATCH_SIZE, RunFolder, load_run
from lorita.runs.markdown import side_by_side
from lorita.runs.plots import plot_curves, plot_spectra, plot_sweeps
from lorita.runs.sweep import DEFAULT_POINTS, sweep_run
from lorita.surgery import singular_values

__all__ = ["report_runs"]

logger = logging.getLogger(__name__)


def _label(cfg: TrainConfig) -> str:
    return f"depth {cfg.depth}, wd {cfg.weight_decay:g}"


def _history(run: Path) -> list[dict[str, Any]]:
    path = run / RunFolder.METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stored_sweep(path: Path, model_file: Path, points: Sequence[float]) -> dict[str, Any] | None:
    """The stored sweep if it has exactly ``points`` and is newer than the model, else None."""
    if not path.is_file() or (model_file.is_file() and model_file.stat().st_mtime > path.stat().st_mtime):
        return None
    try:
        sweep = json.loads(path.read_text())
        have = [float(p) for p in sweep["requested_points"]]
    except (ValueError, KeyError, TypeError):
        return None
    if len(have) != len(points) or any(abs(a - float(b)) > 1e-12 for a, b in zip(have, points)):
        logger.info("%s has points %s, not %s: recomputing it", path, have, list(points))
        return None
    return sweep


def report_runs(
    runs: Sequence[str | Path],
    out_dir: str | Path,
    data_dir: str | None = None,
    labels: Sequence[str] | None = None,
    policy: str = "params",
    progress: bool = True,
    data: Any = None,
    device: str = "cpu",
    points: Sequence[float] | None = None,
    eval_batch_size: int = EVAL_BATCH_SIZE,
) -> Path:
    """Compare trained runs: spectra per layer, training curves, accuracy vs params kept.

    Every run is swept at the same ``points`` (default: :data:`~lorita.runs.sweep.DEFAULT_POINTS` of ``policy``):
    a run's stored ``sweep-<policy>/sweep.json`` is reused only when it has exactly those points and
    is newer than the run's model file; otherwise the sweep is recomputed (and stored), so the table
    and the plot always compare like with like.
    Writes ``report.md``, ``spectra.png``, ``curves.png`` and ``accuracy_vs_params.png``.
    ``eval_batch_size``: images per evaluation forward pass.

    Returns:
        Path of ``report.md``.

    Raises:
        ValueError: ``labels`` of the wrong length; errors from loading runs.
    """
    runs = [Path(r) for r in runs]
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"`labels` has {len(labels)} entries for {len(runs)} runs; give one per run")
    points = list(DEFAULT_POINTS[policy] if points is None else points)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spectra, sweeps, names, histories = {}, [], [], {}
    for i, run_dir in enumerate(runs):
        loaded = load_run(run_dir, data_dir, data=data, device=device, eval_batch_size=eval_batch_size)
        name = labels[i] if labels else _label(loaded.cfg)
        if name in spectra:
            name = f"{name} ({run_dir.name})"
        names.append(name)
        spectra[name] = singular_values(loaded.dense, *loaded.targets)
        histories[name] = _history(run_dir)
        sweep_file = RunFolder(run_dir).default_out("sweep", policy) / RunFolder.SWEEP
        stored = _stored_sweep(sweep_file, run_dir / RunFolder.MODEL, points)
        if stored is not None:
            sweeps.append(stored)
        else:
            sweeps.append(sweep_run(run_dir, policy, points, sweep_file.parent,
                                    progress=progress, run=loaded))
    plot_spectra(spectra, out / "spectra.png")
    if any(histories.values()):
        plot_curves({k: v for k, v in histories.items() if v}, out / "curves.png")
    plot_sweeps(sweeps, out / "accuracy_vs_params.png", labels=names)
    lines = [
        "# lorita report",
        "",
        "Runs: " + ", ".join(f"`{r}` ({n})" for r, n in zip(runs, names)),
        "",
        "Test accuracy is reported only; ranks come from the spectra (policy "
        f"`{policy}`), nothing is selected on the test split. Weight params count the targeted layers "
        "in their deployable form (a layer is split only where that is smaller).",
        "",
        "## Accuracy vs weight params kept",
        "",
        side_by_side(sweeps, names),
        "",
        "![accuracy vs params](accuracy_vs_params.png)",
        "",
        "## Singular-value spectra (merged weights, σ_i/σ_1)",
        "",
        "![spectra](spectra.png)",
        "",
    ]
    if any(histories.values()):
        lines += ["## Training curves", "", "![curves](curves.png)", ""]
    path = out / "report.md"
    io.atomic_write_text(path, "\n".join(lines))
    return path

"""Files in, files out for the rank search: ``lorita compress DIR --search greedy`` and the
searched points of ``lorita sweep`` (see :mod:`lorita.ranks.search`).

``compress_search_run`` writes the same artefacts as a one-shot ``lorita compress`` —
``merged.safetensors``, ``ranks.json``, ``low_rank.safetensors``, ``report.json``,
``report.md`` — plus ``search_trace.json`` (one row per event: step, layer, rank, MACs, val acc)
and, with ``quantize="int8"``, ``low_rank_int8.pt``. The search and any fine-tuning see the
validation and training splits only; test accuracy is computed once, for the report.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from lorita import io
from lorita.counting import count_macs
from lorita.pipeline import LoadedRun, build_info, load_run, make_loaders, model_row, remove_stale
from lorita.quantize import file_bytes, quantize_int8, save_quantized
from lorita.ranks.search import BatchEvaluator, GreedySearch, SearchResult, points, search
from lorita.runs.markdown import pct

__all__ = [
    "model_row",
    "run_search",
    "compress_search_run",
    "add_int8",
    "quantize_compressed",
    "search_points",
    "QUANTIZE_CHOICES",
]

logger = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("int8",)


def _write_json(path: Path, obj: Any) -> None:
    io.atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def run_search(
    run: LoadedRun,
    config: GreedySearch,
    val_samples: int | None = None,
    exclude_modules: Any = None,
    progress: bool = True,
) -> SearchResult:
    """:func:`lorita.search` on a loaded run: validation loader as ``evaluate``, training split
    (the run's batch size and shuffling) for fine-tuning, the run's targets (``exclude_modules``
    overrides the run's exclusions)."""
    evaluator = BatchEvaluator(run.val, max_samples=val_samples, device=run.device)
    train = None
    if config.finetune is not None:
        train, _, _ = make_loaders(run.data, run.cfg)
    target, exclude = run.targets
    return search(
        run.dense,
        evaluator,
        config,
        example_inputs=run.example_inputs,
        finetune_data=train,
        target_modules=target,
        exclude_modules=exclude_modules if exclude_modules is not None else exclude,
        progress=progress,
        device=run.device,
    )


def add_int8(run: LoadedRun, model: nn.Module, out: Path, label: str) -> dict[str, Any]:
    """Quantize ``model`` (dynamic int8, a CPU-only kernel: done on a CPU copy and evaluated on the
    CPU), save ``low_rank_int8.pt``, return its row (with bytes)."""
    cpu_model = copy.deepcopy(model).cpu() if run.device != "cpu" else model
    q = quantize_int8(cpu_model)
    path = save_quantized(
        q, out / "low_rank_int8.pt", float_model=cpu_model, metadata={"config": run.cfg.to_dict()}
    )
    row = model_row(run, q, label, quantized=True, device="cpu")
    # int8 changes the arithmetic, not the counts: params and MACs are the float model's
    float_row = model_row(run, model, label, with_test=False)
    for k in ("params", "macs", "weight_params", "weight_params_frac", "params_frac", "macs_frac", "ranks"):
        row[k] = float_row[k]
    row["bytes"] = file_bytes(path)
    row["file"] = path.name
    return row


def _markdown(report: dict[str, Any]) -> str:
    rows = [report["dense"], report["low_rank"]] + ([report["int8"]] if report.get("int8") else [])
    s = report["search"]
    lines = [
        f"# lorita compress — greedy rank search, tolerance {points(s['config']['tolerance'])}",
        "",
        f"Run: `{report['run']}`. Ranks chosen on the validation split ({report['val_samples']} images); "
        f"test accuracy reported once, never used. MACs per sample (FLOPs = 2·MACs). Bytes: files on disk.",
        "",
        "| model | val acc % | test acc % | params | MACs/sample | % MACs | bytes on disk |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {pct(r['val_acc'])} | {pct(r['test_acc'])} | {r['params']:,} | "
            f"{r['macs']:,} | {pct(r['macs_frac'], 1)} | {r.get('bytes', 0):,} |"
        )
    lines += [
        "",
        f"Search: reference val acc {pct(s['reference']['acc'])}%, final {pct(s['final']['acc'])}%; "
        f"{s['evaluations']} evaluations, {s['finetunes']} fine-tunes, {s['wall_seconds']:.1f} s. "
        f"Stopped: {s['stop_reason']}.",
        "",
        "| layer | rank | form |",
        "|---|---:|---|",
        *[f"| {k} | {v} | {s['forms'][k]} |" for k, v in s["ranks"].items()],
        "",
        "Trace: `search_trace.json`.",
        "",
    ]
    return "\n".join(lines)


def compress_search_run(
    run_dir: str | Path,
    out_dir: str | Path,
    config: GreedySearch,
    data_dir: str | None = None,
    quantize: str | None = None,
    val_samples: int | None = None,
    exclude_modules: Any = None,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Search ranks for a trained run and write the compress artefacts (module docstring);
    evaluation, search and fine-tuning run on ``device``.

    Raises:
        ValueError: unknown ``quantize``; errors of :func:`lorita.search` and of loading the run.
        RuntimeError: int8 requested but unavailable in this torch.
    """
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {QUANTIZE_CHOICES}")
    run = load_run(run_dir, data_dir, device=device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = run_search(run, config, val_samples, exclude_modules, progress)
    dense_row = model_row(run, run.dense, "dense (merged)")
    ft = " + fine-tune" if config.finetune is not None else ""
    ft += " + distill" if config.finetune is not None and config.finetune.distill is not None else ""
    low_row = model_row(run, result.model, f"low-rank (greedy search{ft})", result.ranks)
    low_row["wall_seconds"] = time.perf_counter() - t0
    build = build_info(run.cfg, run.data)  # lets `lorita export OUT` rebuild the model without the data
    dense_row["bytes"] = file_bytes(
        io.save(run.dense, out / "merged.safetensors", metadata={"run": str(run_dir), "build": build})
    )
    low_row["bytes"] = file_bytes(
        io.save(
            result.model,
            out / "low_rank.safetensors",
            metadata={"run": str(run_dir), "search": result.config, "build": build},
        )
    )
    _write_json(out / "ranks.json", result.ranks)
    _write_json(out / "search_trace.json", result.trace)
    report: dict[str, Any] = {
        "run": str(run_dir),
        "policy": "search:greedy",
        "dense": dense_row,
        "low_rank": low_row,
        "search": result.to_dict(),
        "val_samples": min(val_samples or len(run.data.val_y), len(run.data.val_y)),
        "layers": count_macs(result.model, run.example_inputs).to_dict(),
    }
    if quantize == "int8":
        report["int8"] = add_int8(run, result.model, out, f"{low_row['label']} + int8")
    else:
        remove_stale(out, ("low_rank_int8.pt",))
    _write_json(out / "report.json", report)
    io.atomic_write_text(out / "report.md", _markdown(report))
    return report


def search_points(
    run: LoadedRun,
    tolerances: Sequence[float],
    base: GreedySearch | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Searched points for ``lorita sweep``: one greedy search per tolerance (points), as rows."""
    import dataclasses

    base = base or GreedySearch()
    rows = []
    for tol in tolerances:
        res = run_search(run, dataclasses.replace(base, tolerance=float(tol)), progress=progress)
        row = model_row(run, res.model, f"search:{tol:g}", res.ranks)
        row["point"] = float(tol)
        rows.append(row)
    return rows


def quantize_compressed(out_dir: str | Path, data_dir: str | None = None) -> dict[str, Any]:
    """Add int8 to a one-shot ``lorita compress`` folder: quantize its ``low_rank.safetensors``,
    write ``low_rank_int8.pt`` and add ``bytes`` and an ``int8`` row to ``report.json``."""
    out = Path(out_dir)
    report = json.loads((out / "report.json").read_text())
    run = load_run(report["run"], data_dir)
    from lorita.models import build_model
    from lorita.pipeline import _model_kwargs

    fresh = build_model(run.cfg.model, **_model_kwargs(run.cfg, run.data))
    low = io.load(fresh, out / "low_rank.safetensors").eval()
    report["dense"]["bytes"] = file_bytes(out / "merged.safetensors")
    report["low_rank"]["bytes"] = file_bytes(out / "low_rank.safetensors")
    report["int8"] = add_int8(run, low, out, f"{report['low_rank']['label']} + int8")
    _write_json(out / "report.json", report)
    return report

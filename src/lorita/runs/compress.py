"""``lorita compress``: ranks for a trained run — from a rank policy or the greedy search —
and the compressed folder (layout: :mod:`lorita.runs.folder`).

Both paths write ``merged.safetensors``, ``ranks.json``, ``low_rank.safetensors``,
``report.json`` and ``report.md``; the search adds ``search_trace.json`` (one row per event:
step, layer, rank, MACs, val acc) and, with ``quantize="int8"``, ``low_rank_int8.pt``. The search
and any fine-tuning see the validation and training splits only; test accuracy is computed
once, for the report.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

from torch import nn

from lorita import io
from lorita._files import file_bytes, write_json
from lorita.counting import count_macs
from lorita.quantize import quantize_int8, save_quantized
from lorita.ranks.policies import parse_policy, select_ranks
from lorita.ranks.search import BatchEvaluator, GreedySearch, SearchResult, search
from lorita.runs.folder import (
    LoadedRun,
    RunFolder,
    build_info,
    evaluate_point,
    load_run,
    make_loaders,
    model_row,
    remove_stale,
)
from lorita.runs.markdown import compress_markdown, search_markdown

__all__ = [
    "compress_run",
    "compress_search_run",
    "run_search",
    "add_int8",
    "quantize_compressed",
    "QUANTIZE_CHOICES",
]

logger = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("int8",)


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
    remove_stale(out, (RunFolder.INT8, RunFolder.TRACE))  # from an earlier run into this folder
    dense_row, _ = evaluate_point(run, None, "dense (merged)")
    low_row, low = evaluate_point(run, ranks, f"low-rank ({policy})")
    build = build_info(run.cfg, run.data)  # lets `lorita export OUT` rebuild the model without the data
    io.save(run.dense, out / RunFolder.MERGED, metadata={"run": str(run_dir), "build": build})
    io.save(low, out / RunFolder.LOW_RANK, metadata={"run": str(run_dir), "policy": policy, "build": build})
    write_json(out / RunFolder.RANKS, ranks)
    layers = count_macs(low, run.example_inputs)
    report = {"run": str(run_dir), "policy": policy, "dense": dense_row, "low_rank": low_row,
              "layers": layers.to_dict()}
    write_json(out / RunFolder.REPORT, report)
    io.atomic_write_text(out / RunFolder.REPORT_MD, compress_markdown(report, layers.table()))
    return report


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
        q, out / RunFolder.INT8, float_model=cpu_model, metadata={"config": run.cfg.to_dict()}
    )
    row = model_row(run, q, label, quantized=True, device="cpu")
    # int8 changes the arithmetic, not the counts: params and MACs are the float model's
    float_row = model_row(run, model, label, with_test=False)
    for k in ("params", "macs", "weight_params", "weight_params_frac", "params_frac", "macs_frac", "ranks"):
        row[k] = float_row[k]
    row["bytes"] = file_bytes(path)
    row["file"] = path.name
    return row


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
        io.save(run.dense, out / RunFolder.MERGED, metadata={"run": str(run_dir), "build": build})
    )
    low_row["bytes"] = file_bytes(
        io.save(
            result.model,
            out / RunFolder.LOW_RANK,
            metadata={"run": str(run_dir), "search": result.config, "build": build},
        )
    )
    write_json(out / RunFolder.RANKS, result.ranks)
    write_json(out / RunFolder.TRACE, result.trace)
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
        remove_stale(out, (RunFolder.INT8,))
    write_json(out / RunFolder.REPORT, report)
    io.atomic_write_text(out / RunFolder.REPORT_MD, search_markdown(report))
    return report


def quantize_compressed(out_dir: str | Path, data_dir: str | None = None) -> dict[str, Any]:
    """Add int8 to a one-shot ``lorita compress`` folder: quantize its ``low_rank.safetensors``,
    write ``low_rank_int8.pt`` and add ``bytes`` and an ``int8`` row to ``report.json``."""
    out = Path(out_dir)
    report = json.loads((out / RunFolder.REPORT).read_text())
    run = load_run(report["run"], data_dir)
    low = RunFolder(out).build_model(RunFolder.LOW_RANK)[0].eval()
    report["dense"]["bytes"] = file_bytes(out / RunFolder.MERGED)
    report["low_rank"]["bytes"] = file_bytes(out / RunFolder.LOW_RANK)
    report["int8"] = add_int8(run, low, out, f"{report['low_rank']['label']} + int8")
    write_json(out / RunFolder.REPORT, report)
    return report

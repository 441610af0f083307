"""``lorita compress``: ranks for a trained run — from a rank policy or the greedy search —
and the compressed folder (layout: :mod:`lorita.runs.folder`), all through one :func:`compress`.

Both paths write ``merged.safetensors``, ``ranks.json``, ``low_rank.safetensors``,
``report.json`` and ``report.md``; the search adds ``search_trace.json`` (one row per event:
step, layer, rank, MACs, val acc) and, with ``quantize="int8"``, ``low_rank_int8.pt``. The search
and any fine-tuning see the validation and training splits only; test accuracy is computed
once, for the report.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorita import io
from lorita._files import file_bytes, write_json
from lorita.counting import count_macs
from lorita.finetune import FinetuneConfig
from lorita.finetune import finetune as finetune_model
from lorita.quantize import quantize_int8, save_quantized
from lorita.ranks.policies import check_multiple, parse_policy, select_ranks
from lorita.ranks.search import BatchEvaluator, GreedySearch, SearchResult, search
from lorita.runs.bench import latency_ratio
from lorita.runs.folder import (
    EVAL_BATCH_SIZE,
    LoadedRun,
    RunFolder,
    build_info,
    load_run,
    make_loaders,
    model_row,
    remove_stale,
)
from lorita.runs.markdown import compress_markdown, search_markdown
from lorita.surgery import to_low_rank

__all__ = ["compress", "run_search", "add_int8", "QUANTIZE_CHOICES"]

logger = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("int8",)


def compress(
    run_dir: str | Path,
    out_dir: str | Path,
    ranks: str | GreedySearch,
    *,
    exclude_modules: Any = None,
    finetune: FinetuneConfig | None = None,
    quantize: str | None = None,
    val_samples: int | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    eval_batch_size: int = EVAL_BATCH_SIZE,
    split: str = "macs",
    latency_batch: int | None = None,
    split_batch: int = 1,
    multiple: int = 1,
) -> dict[str, Any]:
    """``lorita compress``: merge a trained run, choose ranks, split, fine-tune, report (one writer).

    Args:
        run_dir: a folder written by ``lorita train``. out_dir: where the artefacts go.
        ranks: a rank policy string (``"energy:0.99"``, ``"macs:0.3"``, ...; LoRITa §2.9, ranks from
            the spectra alone) or a :class:`GreedySearch` (validation-driven search, paper-notes §4.5).
        exclude_modules: layers to leave dense (regex or names); default: the run's own exclusions.
        finetune: with a policy, fine-tune the low-rank model on the training split after the
            split (distilled from the merged model if ``finetune.distill``); with a search, give it
            in ``GreedySearch.finetune`` instead.
        quantize: ``"int8"`` — also write a dynamic-int8 copy (``low_rank_int8.pt``).
        val_samples: search only: evaluate on the first N validation images.
        data_dir: override the run's data folder. device: where to evaluate / search / fine-tune.
        progress: progress bars. overwrite: replace an earlier compression in ``out_dir``.
        eval_batch_size: images per evaluation forward pass (see ``runs.folder.EVAL_BATCH_SIZE``).
        split: ``"latency"`` (policies only): split only where the pair measures faster (eager, 1
            thread, batch ``split_batch``; :func:`lorita.to_low_rank`), decisions in the report.
        latency_batch: also measure the latency ratio vs dense (eager, 1 thread, this batch).
        multiple: policies only: rank granularity, ``select_ranks(..., multiple=)`` (e.g. 8 on AVX2).

    Returns:
        the report (also ``report.json``): ``dense`` and ``low_rank`` rows (accuracies, params, MACs
        per sample, bytes), ``layers`` (per-layer costs), ``search`` (search only), ``int8``.

    Raises:
        ValueError: a bad policy / config, an unknown ``quantize``, ``finetune`` given twice,
            ``out_dir`` already holding a compression without ``overwrite``; errors of loading the run.
        TypeError: ``ranks`` neither a policy string nor a GreedySearch.
    """
    searching = isinstance(ranks, GreedySearch)
    _check_args(ranks, finetune, quantize, split, latency_batch, split_batch, multiple)
    out = _refuse_overwrite(Path(out_dir), overwrite)
    run = load_run(run_dir, data_dir, device=device, eval_batch_size=eval_batch_size)
    t0 = time.perf_counter()
    if searching:
        result = run_search(run, ranks, val_samples, exclude_modules, progress)
        low, rank_map, meta, ft_cfg = result.model, result.ranks, {"search": result.config}, ranks.finetune
        label = "greedy search"
    else:
        low, rank_map, decisions = _policy_model(run, ranks, exclude_modules, finetune, progress, split, split_batch,
                                                 multiple)
        meta, ft_cfg, result = {"policy": ranks, **multiple_meta(multiple)}, finetune, None
        label = ranks + ("" if multiple == 1 else f", ranks in multiples of {multiple}")
    if ft_cfg is not None:
        label += " + fine-tune" + (" + distill" if ft_cfg.distill is not None else "")
    dense_row = model_row(run, run.dense, "dense (merged)", progress=progress)
    low_row = model_row(run, low, f"low-rank ({label})", rank_map, progress=progress)
    low_row["wall_seconds"] = time.perf_counter() - t0
    latency = _latency_column(run, low, latency_batch, dense_row, low_row)  # None without latency_batch
    out.mkdir(parents=True, exist_ok=True)  # created only once the inputs are known to be good
    build = build_info(run.cfg, run.data)  # lets `lorita export OUT` rebuild the model without the data
    merged_path = io.save(run.dense, out / RunFolder.MERGED, metadata={"run": str(run_dir), "build": build})
    low_path = io.save(low, out / RunFolder.LOW_RANK, metadata={"run": str(run_dir), **meta, "build": build})
    dense_row["bytes"], low_row["bytes"] = file_bytes(merged_path), file_bytes(low_path)
    write_json(out / RunFolder.RANKS, rank_map)
    layers = count_macs(low, run.example_inputs)
    report: dict[str, Any] = {
        "run": str(run_dir),
        "policy": "search:greedy" if searching else ranks,
        **multiple_meta(multiple),
        "dense": dense_row,
        "low_rank": low_row,
        "layers": layers.to_dict(),
    }
    if not searching and split == "latency":
        report.update(split="latency", split_decisions={k: asdict(d) for k, d in decisions.items()})
    report.update({"latency": latency} if latency is not None else {})
    if result is not None:
        write_json(out / RunFolder.TRACE, result.trace)
        report["search"] = result.to_dict()
        report["val_samples"] = min(val_samples or len(run.data.val_y), len(run.data.val_y))
    else:
        remove_stale(out, (RunFolder.TRACE,))
    if quantize == "int8":
        report["int8"] = add_int8(run, low, out, f"{low_row['label']} + int8")
    else:
        remove_stale(out, (RunFolder.INT8,))
    write_json(out / RunFolder.REPORT, report)
    text = search_markdown(report) if searching else compress_markdown(report, layers.table())
    io.atomic_write_text(out / RunFolder.REPORT_MD, text)
    return report


def _refuse_overwrite(out: Path, overwrite: bool) -> Path:
    if (out / RunFolder.REPORT).exists() and not overwrite:
        raise ValueError(
            f"{out} already holds a compressed model ({RunFolder.REPORT}); pass `overwrite=True` to replace "
            f"it, or choose another `out_dir`"
        )
    return out


def multiple_meta(multiple: int) -> dict[str, int]:
    """The report's ``rank_multiple`` entry (absent for the default 1); shared by compress and sweep."""
    return {} if multiple == 1 else {"rank_multiple": multiple}


def _check_args(ranks: Any, finetune: Any, quantize: Any, split: str, latency_batch: Any, split_batch: Any,
                multiple: Any = 1) -> None:
    check_multiple(multiple)
    if isinstance(ranks, GreedySearch) and multiple != 1:
        raise ValueError("`multiple` applies to a policy; give a search its own `GreedySearch(multiple=...)`")
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"`quantize` must be None or one of {QUANTIZE_CHOICES}, got {quantize!r}")
    searching = isinstance(ranks, GreedySearch)
    if not searching and not isinstance(ranks, str):
        raise TypeError(f"`ranks` must be a policy string (e.g. 'energy:0.99') or a GreedySearch, got {ranks!r}")
    if searching and finetune is not None:
        raise ValueError("`finetune` is for policies; a search fine-tunes through GreedySearch(finetune=...)")
    if split not in ("macs", "latency"):
        raise ValueError(f"`split`={split!r} is not one of 'macs', 'latency'")
    if searching and split != "macs":
        raise ValueError("`split`='latency' applies to a policy; a search chooses and splits its own layers")
    for name, b in (("latency_batch", latency_batch), ("split_batch", split_batch)):
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"`{name}` must be an int >= 1, got {b!r}")


def _timing_batch(run: LoadedRun, batch: int | None) -> Any:
    """A seeded random batch of the run's input shape for latency timing (on the CPU)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn((batch or 1, *run.example_inputs.shape[1:]), generator=g)


def _latency_column(run: LoadedRun, low: nn.Module, batch: int | None, dense_row: dict, low_row: dict) -> Any:
    """With ``batch``: the low-rank model's measured latency ratio vs dense (eager, 1 thread)."""
    if batch is None:
        return None
    speedup = latency_ratio(run.dense, low, _timing_batch(run, batch), rounds=5)
    dense_row["latency_ratio"], low_row["latency_ratio"] = 1.0, speedup
    return {"batch": batch, "runtime": "eager", "threads": 1, "rounds": 5, "speedup": speedup}


def _policy_model(
    run: LoadedRun, policy: str, exclude_modules: Any, ft: FinetuneConfig | None, progress: bool,
    split: str = "macs", split_batch: int = 1, multiple: int = 1,
) -> tuple[nn.Module, dict[str, int], dict]:
    """The low-rank model of a one-shot policy (fine-tuned on the training split if ``ft``), its
    ranks and the split decisions."""
    pol = parse_policy(policy, example_inputs=run.example_inputs)
    target, exclude = run.targets
    ranks = select_ranks(run.dense, pol, target, exclude_modules if exclude_modules is not None else exclude,
                         multiple=multiple)
    if split == "latency":  # timed on the CPU, eager, one thread
        x = _timing_batch(run, split_batch)
        low, decisions = to_low_rank(run.dense.cpu(), ranks, split="latency", example_inputs=x, report=True)
        low = low.to(run.device)
        run.dense.to(run.device)
    else:
        low, decisions = to_low_rank(run.dense, ranks, report=True)
    if ft is not None:
        train, _, _ = make_loaders(run.data, run.cfg)
        teacher = run.dense.eval() if ft.distill is not None else None
        finetune_model(low, train, ft, teacher=teacher, seed=run.cfg.seed, device=run.device, progress=progress)
        low.eval()
    return low, ranks, decisions


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



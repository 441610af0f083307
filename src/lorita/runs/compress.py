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
from pathlib import Path
from typing import Any

from torch import nn

from lorita import io
from lorita._files import file_bytes, write_json
from lorita.counting import count_macs
from lorita.finetune import FinetuneConfig
from lorita.finetune import finetune as finetune_model
from lorita.quantize import quantize_int8, save_quantized
from lorita.ranks.policies import parse_policy, select_ranks
from lorita.ranks.search import BatchEvaluator, GreedySearch, SearchResult, search
from lorita.runs.folder import (
    LoadedRun,
    RunFolder,
    build_info,
    EVAL_BATCH_SIZE,
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

    Returns:
        the report (also ``report.json``): ``dense`` and ``low_rank`` rows (accuracies, params, MACs
        per sample, bytes), ``layers`` (per-layer costs), ``search`` (search only), ``int8``.

    Raises:
        ValueError: a bad policy / config, an unknown ``quantize``, ``finetune`` given twice,
            ``out_dir`` already holding a compression without ``overwrite``; errors of loading the run.
        TypeError: ``ranks`` neither a policy string nor a GreedySearch.
    """
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"`quantize` must be None or one of {QUANTIZE_CHOICES}, got {quantize!r}")
    searching = isinstance(ranks, GreedySearch)
    if not searching and not isinstance(ranks, str):
        raise TypeError(f"`ranks` must be a policy string (e.g. 'energy:0.99') or a GreedySearch, got {ranks!r}")
    if searching and finetune is not None:
        raise ValueError("`finetune` is for policies; a search fine-tunes through GreedySearch(finetune=...)")
    out = Path(out_dir)
    if (out / RunFolder.REPORT).exists() and not overwrite:
        raise ValueError(
            f"{out} already holds a compressed model ({RunFolder.REPORT}); pass `overwrite=True` to replace "
            f"it, or choose another `out_dir`"
        )
    run = load_run(run_dir, data_dir, device=device, eval_batch_size=eval_batch_size)
    t0 = time.perf_counter()
    if searching:
        result = run_search(run, ranks, val_samples, exclude_modules, progress)
        low, rank_map, meta = result.model, result.ranks, {"search": result.config}
        ft_cfg = ranks.finetune
        label = "greedy search"
    else:
        low, rank_map = _policy_model(run, ranks, exclude_modules, finetune, progress)
        meta, ft_cfg, label, result = {"policy": ranks}, finetune, ranks, None
    if ft_cfg is not None:
        label += " + fine-tune" + (" + distill" if ft_cfg.distill is not None else "")
    dense_row = model_row(run, run.dense, "dense (merged)", progress=progress)
    low_row = model_row(run, low, f"low-rank ({label})", rank_map, progress=progress)
    low_row["wall_seconds"] = time.perf_counter() - t0
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
        "dense": dense_row,
        "low_rank": low_row,
        "layers": layers.to_dict(),
    }
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


def _policy_model(
    run: LoadedRun, policy: str, exclude_modules: Any, ft: FinetuneConfig | None, progress: bool
) -> tuple[nn.Module, dict[str, int]]:
    """The low-rank model of a one-shot policy (fine-tuned on the training split if ``ft``)."""
    pol = parse_policy(policy, example_inputs=run.example_inputs)
    target, exclude = run.targets
    ranks = select_ranks(run.dense, pol, target, exclude_modules if exclude_modules is not None else exclude)
    low = to_low_rank(run.dense, ranks)
    if ft is not None:
        train, _, _ = make_loaders(run.data, run.cfg)
        teacher = run.dense.eval() if ft.distill is not None else None
        finetune_model(low, train, ft, teacher=teacher, seed=run.cfg.seed, device=run.device, progress=progress)
        low.eval()
    return low, ranks


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



"""``lorita bench``: measured latency of the models in lorita folders, as ratios vs their dense source.

Folder contract (:mod:`lorita.runs.folder`), no data needed:

* a compressed folder (``lorita compress``): ``dense`` = ``merged.safetensors`` (the source),
  ``low_rank`` = ``low_rank.safetensors``;
* a training folder (``lorita train``): ``dense`` = the merged model, ``trained`` = the model in
  its saved (factorized) training form, when that differs.

Every (batch, runtime, memory format) setting times the folder's models interleaved in rounds
(:func:`lorita.compare_latency`) on a seeded random batch of the recorded input shape. The table
(MACs and params per sample, median latency on this machine for context, latency ratio
``t_dense / t_model``) is written as ``bench.json`` + ``bench.md``, atomically.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorita import io
from lorita._files import atomic_write_text, write_json
from lorita.counting import count_macs
from lorita.fold import fold_batchnorm
from lorita.latency import compare_latency
from lorita.runs.config import TrainConfig
from lorita.runs.folder import RunFolder, build_run_model
from lorita.surgery import merge
from lorita.timing import RUNTIMES, check_runtime, check_threads

__all__ = ["bench_dirs", "folder_models", "bench_markdown", "latency_ratio", "BENCH_JSON", "BENCH_MD"]

logger = logging.getLogger(__name__)

BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"


def folder_models(folder: str | Path) -> tuple[dict[str, nn.Module], tuple[int, ...]]:
    """``({label: model}, input shape)`` of a lorita folder, the dense source first.

    Raises:
        FileNotFoundError / ValueError: not a folder, or neither a compressed nor a training folder.
    """
    src = RunFolder(folder)
    if not src.path.is_dir():
        raise FileNotFoundError(
            f"{src.path} is not a folder; pass a folder written by `lorita compress` or `lorita train`"
        )
    if src.is_compressed():
        dense, shape = src.build_model(RunFolder.MERGED)
        low, _ = src.build_model(RunFolder.LOW_RANK)
        return {"dense": dense.eval(), "low_rank": low.eval()}, shape
    if src.is_trained():
        build = src.build_spec(RunFolder.MODEL)
        if build is None:
            raise ValueError(f"{src / RunFolder.MODEL} does not record its model spec (an older lorita); "
                             f"bench its `lorita compress` folder instead")
        cfg = TrainConfig.load(src / RunFolder.CONFIG)
        trained = io.load(build_run_model(src, cfg, None), src / RunFolder.MODEL).eval()
        dense = merge(trained).eval()
        models = {"dense": dense}
        if any(type(a) is not type(b) for a, b in zip(trained.modules(), dense.modules(), strict=False)):
            models["trained"] = trained
        return models, tuple(int(s) for s in build["input_shape"])
    raise ValueError(
        f"{src.path} holds neither low_rank.safetensors (from `lorita compress`) nor config.json + "
        f"model.safetensors (from `lorita train`); pass one of those folders"
    )


def latency_ratio(dense: nn.Module, model: nn.Module, example_inputs: Any, rounds: int = 5) -> float:
    """Measured ``t_dense / t_model`` (> 1: ``model`` is faster): eager, 1 thread, CPU copies,
    ``rounds`` interleaved rounds (:func:`lorita.compare_latency`); for ``compress``/``sweep --latency``."""
    models = {"dense": copy.deepcopy(dense).cpu(), "model": copy.deepcopy(model).cpu()}
    return compare_latency(models, example_inputs, runtime="eager", threads=1, rounds=rounds).speedup["model"]


def _settings(batches: Sequence[int], runtimes: Sequence[str], threads: int, channels_last: bool) -> list:
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise ValueError(f"`batches` must be ints >= 1, got {list(batches)!r}")
    if not runtimes:
        raise ValueError(f"`runtimes` must name at least one of {', '.join(RUNTIMES)}")
    for rt in runtimes:
        check_runtime(rt)
    check_threads(threads)
    fmts = ["nchw", "channels_last"] if channels_last else ["nchw"]
    return [(b, rt, f) for b in batches for rt in runtimes for f in fmts if not (rt == "onnxruntime" and f != "nchw")]


def bench_dirs(
    dirs: Sequence[str | Path],
    batches: Sequence[int] = (1, 64),
    runtimes: Sequence[str] = ("eager",),
    threads: int = 1,
    channels_last: bool = False,
    rounds: int = 5,
    out_dir: str | Path | None = None,
    seed: int = 0,
    timer: Any = None,
    fold_bn: bool = True,
) -> dict[str, Any]:
    """``lorita bench``: time each folder's models side by side, write ``bench.json`` + ``bench.md``.

    Args:
        dirs: lorita folders (see the module docstring). batches: batch sizes to time.
        runtimes: ``"eager"`` and/or ``"onnxruntime"`` (ONNX Runtime runs NCHW only).
        threads: intra-op threads. channels_last: also time eager channels_last (4-D inputs).
        rounds: interleaved rounds per setting. out_dir: where the files go (default: the one
            folder; required for several). seed: of the random input batch. timer: see
            :mod:`lorita.timing` (tests pass a fake one).
        fold_bn: time the models as deployed, every eval-mode BatchNorm folded into the layer
            before it (:func:`lorita.fold_batchnorm`, exact to float rounding); ``False``: as stored.

    Returns:
        ``{"rows": [...], "settings": {...}}``; each row: dir, model, batch, runtime, format, macs,
        params (per sample), median_s, latency_ratio (t_dense / t_model, > 1 faster).

    Raises:
        FileNotFoundError / ValueError: bad folders, unknown runtime, onnxruntime missing, bad
            batches/threads, several folders without ``out_dir``.
    """
    if not dirs:
        raise ValueError("give at least one folder")
    if out_dir is None and len(dirs) > 1:
        raise ValueError("several folders: give `out_dir` for bench.json / bench.md")
    settings = _settings(batches, runtimes, threads, channels_last)
    loaded = [(str(d), *folder_models(d)) for d in dirs]  # every folder checked before timing
    if fold_bn:
        loaded = [(n, {k: fold_batchnorm(m) for k, m in ms.items()}, s) for n, ms, s in loaded]
    rows = []
    for name, models, shape in loaded:
        costs = {k: count_macs(m, torch.zeros(1, *shape)) for k, m in models.items()}
        for batch, runtime, fmt in settings:
            x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))
            if fmt == "channels_last":
                if x.dim() != 4:
                    continue
                x = x.contiguous(memory_format=torch.channels_last)
            cmp = compare_latency(models, x, runtime, threads, rounds, reference="dense", timer=timer)
            for label in models:
                rows.append({
                    "dir": name, "model": label, "batch": batch, "runtime": runtime, "format": fmt,
                    "macs": costs[label].total_macs, "params": costs[label].total_params,
                    "median_s": cmp.median[label], "latency_ratio": cmp.speedup[label],
                })
            logger.info("bench %s batch %d %s/%s: %s", name, batch, runtime, fmt, cmp.speedup)
    result = {"rows": rows, "settings": {"threads": threads, "rounds": rounds, "fold_bn": fold_bn,
                                         "torch": torch.__version__}}
    out = Path(out_dir) if out_dir is not None else Path(dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / BENCH_JSON, result)
    atomic_write_text(out / BENCH_MD, bench_markdown(result))
    result["out"] = str(out)
    return result


def bench_markdown(result: dict[str, Any]) -> str:
    """The bench table as Markdown."""
    s = result["settings"]
    lines = [
        "# lorita bench", "",
        f"{s['threads']} thread(s), {s['rounds']} interleaved rounds, torch {s['torch']}. Latency ratio = "
        f"t_dense / t_model (> 1: faster than the dense source), median of per-round ratios; the median time "
        f"is this machine's, for context only. MACs and params per sample"
        + (", counted as timed: BatchNorm folded into the layer before it (so params are fewer than "
           "`lorita compress` reports by the BatchNorm scales and shifts)." if s.get("fold_bn") else ".") , "",
        "| folder | model | batch | runtime | format | MACs | params | median (ms) | latency ratio | MAC ratio |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    dense = {(r["dir"], r["batch"], r["runtime"], r["format"]): r for r in result["rows"] if r["model"] == "dense"}
    for r in result["rows"]:
        ref = dense[(r["dir"], r["batch"], r["runtime"], r["format"])]
        mac_ratio = ref["macs"] / r["macs"] if r["macs"] else float("nan")
        lines.append(
            f"| {r['dir']} | {r['model']} | {r['batch']} | {r['runtime']} | {r['format']} | {r['macs']:,} | "
            f"{r['params']:,} | {1e3 * r['median_s']:.3f} | {r['latency_ratio']:.2f} | {mac_ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"

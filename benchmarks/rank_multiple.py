"""Ranks in multiples of 8 vs unrounded ranks, timed side by side in one process (issue 9).

For each model and MAC budget: ``MacBudget`` ranks with ``select_ranks(..., multiple=1)`` and
``multiple=8`` (random weights, default targets), both deployed with ``split="macs"``, and timed
against the dense model in interleaved rounds (:func:`lorita.compare_latency`, 1 thread) on ONNX
Runtime. Ratios only (shared machine).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rank_multiple.py --out benchmarks/results/rank_multiple

Writes ``<out>.json``, ``<out>.md`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import lorita
from lorita.io import atomic_path, atomic_write_text
from lorita.models import DEFAULT_CFGS, build_model, default_targets
from lorita.timing import BenchmarkTimer


def run(name: str, budget: float, batches: list[int], runtime: str, rounds: int) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(name).eval()
    targets, exclude = default_targets(name)
    x1 = torch.zeros(1, *DEFAULT_CFGS[name]["input_shape"])
    dense_macs = lorita.count_macs(model, x1).total_macs
    models, ranks = {"dense": model}, {}
    for k in (1, 8):
        ranks[k] = lorita.select_ranks(model, lorita.MacBudget(budget, x1), targets, exclude, multiple=k)
        models[f"multiple {k}"] = lorita.to_low_rank(model, ranks[k])
    timer = BenchmarkTimer(min_run_time=0.02, warmup=1, best=True)
    rows = []
    for batch in batches:
        cmp = lorita.compare_latency(models, torch.randn(batch, *x1.shape[1:]), runtime=runtime, rounds=rounds,
                                     timer=timer)
        for k in (1, 8):
            mac = dense_macs / lorita.count_macs(models[f"multiple {k}"], x1).total_macs
            lat = cmp.speedup[f"multiple {k}"]
            rows.append({"model": name, "budget": budget, "batch": batch, "runtime": runtime, "multiple": k,
                         "mac_ratio": round(mac, 3), "latency_ratio": round(lat, 3), "realized": round(lat / mac, 3),
                         "ranks": ranks[k]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "vgg16"])
    p.add_argument("--budget", type=float, default=0.2)
    p.add_argument("--batches", nargs="+", type=int, default=[64, 1])
    p.add_argument("--runtime", default="onnxruntime")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--out", default="benchmarks/results/rank_multiple")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = [r for m in args.models for r in run(m, args.budget, args.batches, args.runtime, args.rounds)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": 1, "args": vars(args), "seconds": round(time.perf_counter() - t0)}
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = ["# Ranks in multiples of 8 vs unrounded, side by side (one process)", "",
          f"`MacBudget({args.budget})` ranks on random weights, `split=\"macs\"`, {args.runtime}, 1 thread, "
          f"{args.rounds} interleaved rounds (median of per-round ratios vs dense), torch {torch.__version__}, "
          f"{meta['seconds']} s. Ratios only.", "",
          "| model | batch | multiple | MAC ratio | latency ratio | realized |", "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['model']} | {r['batch']} | {r['multiple']} | {r['mac_ratio']:.2f} | {r['latency_ratio']:.2f} | "
           f"{r['realized']:.2f} |" for r in rows]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    keys = [(r["model"], r["batch"]) for r in rows if r["multiple"] == 1]
    series = {f"multiple={k}": [next(r["realized"] for r in rows if (r["model"], r["batch"]) == key
                                     and r["multiple"] == k) for key in keys] for k in (1, 8)}
    bar_figure(out.with_suffix(".png"), [f"{m}\nbatch {b}" for m, b in keys], series,
               f"MacBudget({args.budget}), {args.runtime}, 1 thread")


def bar_figure(path: Path, labels: list[str], series: dict[str, list[float]], title: str,
               hlines: tuple[float, ...] = (0.7,), fontsize: int | None = None) -> None:
    """Grouped bars of realized fractions (one group per label, one bar per series), written
    atomically as a PNG; dotted lines at ``hlines`` (the issue's targets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(7, 0.7 * len(labels)), 4))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar([j + width * i for j in range(len(labels))], vals, width=width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))], labels, fontsize=fontsize)
    for h in hlines:
        ax.axhline(h, color="k", ls=":", lw=1)
    ax.set_ylabel("realized (latency ratio / MAC ratio)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

if __name__ == "__main__":
    main()

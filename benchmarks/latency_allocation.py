"""LatencyBudget with ``allocation="macs"`` vs ``"layer"``: which MAC fraction meets the same
measured latency budget (issue 9).

For each model: ``LatencyBudget(fraction, x, runtime, split="macs", allocation=...)`` on random weights,
default targets, ranks in multiples of ``--multiple``; then the chosen model is timed once more
against dense side by side (:func:`lorita.compare_latency`, 1 thread). Reported: the MAC fraction
each allocation could keep within the latency budget, the measured latency fraction, and the
share of the targeted layers' energy kept (random weights: flat spectra). Ratios only.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latency_allocation.py --out benchmarks/results/latency_allocation

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from layer_budget import _energy_kept

import lorita
from lorita.io import atomic_write_text
from lorita.models import DEFAULT_CFGS, build_model, default_targets
from lorita.ranks.policies import layer_infos
from lorita.timing import BenchmarkTimer


def run(name: str, fraction: float, batch: int, runtime: str, multiple: int, rounds: int) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(name).eval()
    targets, exclude = default_targets(name)
    shape = DEFAULT_CFGS[name]["input_shape"]
    x = torch.randn(batch, *shape)
    x1 = torch.zeros(1, *shape)
    dense_macs = lorita.count_macs(model, x1).total_macs
    infos = layer_infos(model, targets, exclude)
    timer = BenchmarkTimer(min_run_time=0.02, warmup=1, best=True)
    rows = []
    for alloc in ("macs", "layer"):
        pol = lorita.LatencyBudget(fraction, example_inputs=x, runtime=runtime, split="macs", rounds=rounds,
                                   timer=timer, allocation=alloc)
        t0 = time.perf_counter()
        try:
            ranks = lorita.select_ranks(model, pol, targets, exclude, multiple=multiple)
        except ValueError as exc:
            print(f"{name} {alloc}: {exc}", flush=True)
            continue
        low = lorita.to_low_rank(model, ranks)
        cmp = lorita.compare_latency({"dense": model, "low": low}, x, runtime=runtime, rounds=rounds, timer=timer)
        rows.append({"model": name, "fraction": fraction, "batch": batch, "runtime": runtime, "allocation": alloc,
                     "macs_frac": round(lorita.count_macs(low, x1).total_macs / dense_macs, 4),
                     "latency_frac": round(1 / cmp.speedup["low"], 3),
                     "energy_kept": round(_energy_kept(infos, ranks), 4), "seconds": round(time.perf_counter() - t0),
                     "ranks": ranks})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "ranks"}), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet18"])
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--runtime", default="onnxruntime")
    p.add_argument("--multiple", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/latency_allocation")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = [r for m in args.models for b in args.batches
            for r in run(m, args.fraction, b, args.runtime, args.multiple, args.rounds)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": 1, "args": vars(args), "seconds": round(time.perf_counter() - t0)}
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = [f"# LatencyBudget({args.fraction:g}): allocation \"macs\" vs \"layer\"", "",
          f"Random weights, default targets, ranks in multiples of {args.multiple}, `split=\"macs\"`, {args.runtime}, "
          f"1 thread, {args.rounds} interleaved rounds per step (6 bisection steps), torch {torch.__version__}, "
          f"{meta['seconds']} s. *latency fraction*: the chosen model re-timed against dense. Ratios only.", "",
          "| model | batch | allocation | % MACs kept | latency fraction | energy kept |",
          "|---|---:|---|---:|---:|---:|"]
    md += [f"| {r['model']} | {r['batch']} | {r['allocation']} | {100 * r['macs_frac']:.1f} | "
           f"{r['latency_frac']:.3f} | {r['energy_kept']:.3f} |" for r in rows]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")


if __name__ == "__main__":
    main()

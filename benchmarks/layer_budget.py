"""LayerBudget (the same MAC share in every layer) vs MacBudget (the share spent where the spectra
say), timed side by side in one process (issue 9).

For each model and budget ``f``: ranks from ``MacBudget(f)`` and ``LayerBudget(f)`` (random weights,
default targets, ``multiple``), both deployed with ``split="macs"`` and timed against the dense model
in interleaved rounds (:func:`lorita.compare_latency`, 1 thread). Ratios only (shared machine). Also
the share of the targeted layers' energy ``Σ S²`` each allocation keeps (on random weights: a flat
spectrum, so this says little about trained models; see the README for those).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/layer_budget.py --out benchmarks/results/layer_budget

Writes ``<out>.json``, ``<out>.md`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rank_multiple import bar_figure

import lorita
from lorita.io import atomic_write_text
from lorita.models import DEFAULT_CFGS, build_model, default_targets
from lorita.ranks.policies import layer_infos, parse_policy
from lorita.timing import BenchmarkTimer

POLICIES = ("macs:{f}", "layer:{f}")  # templates, {f} = the budget
NAMES = {"macs": "MacBudget", "layer": "LayerBudget"}


def _name(template: str) -> str:
    """``"macs:{f},cap=0.5"`` -> ``"macs,cap=0.5"`` (the row's policy label)."""
    return template.replace(":{f}", "")


def _energy_kept(infos, ranks) -> float:
    kept = sum(float((i.S.double()[: ranks[i.name]] ** 2).sum()) for i in infos)
    return kept / sum(float((i.S.double() ** 2).sum()) for i in infos)


def run(name: str, budget: float, batches: list[int], runtime: str, rounds: int, multiple: int,
        policies: tuple[str, ...] = POLICIES) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(name).eval()
    targets, exclude = default_targets(name)
    x1 = torch.zeros(1, *DEFAULT_CFGS[name]["input_shape"])
    dense_macs = lorita.count_macs(model, x1).total_macs
    infos = layer_infos(model, targets, exclude)
    pols = {_name(t): parse_policy(t.format(f=budget), example_inputs=x1) for t in policies}
    models, ranks = {"dense": model}, {}
    for k in pols:
        try:
            ranks[k] = lorita.select_ranks(model, pols[k], targets, exclude, multiple=multiple)
        except ValueError as exc:  # an infeasible budget at this multiple
            print(f"{name} {k}:{budget}: {exc}")
            continue
        models[k] = lorita.to_low_rank(model, ranks[k])
    timer = BenchmarkTimer(min_run_time=0.02, warmup=1, best=True)
    rows = []
    for batch in batches:
        cmp = lorita.compare_latency(models, torch.randn(batch, *x1.shape[1:]), runtime=runtime, rounds=rounds,
                                     timer=timer)
        for k in ranks:
            mac = dense_macs / lorita.count_macs(models[k], x1).total_macs
            lat = cmp.speedup[k]
            rows.append({"model": name, "budget": budget, "batch": batch, "runtime": runtime, "policy": k,
                         "multiple": multiple, "mac_ratio": round(mac, 3), "latency_ratio": round(lat, 3),
                         "realized": round(lat / mac, 3), "energy_kept": round(_energy_kept(infos, ranks[k]), 4),
                         "ranks": ranks[k]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "vgg16", "vit", "fcn", "resnet20"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.2, 0.33])
    p.add_argument("--batches", nargs="+", type=int, default=[64, 1])
    p.add_argument("--runtime", default="onnxruntime")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--multiple", type=int, default=8)
    p.add_argument("--policies", nargs="+", default=list(POLICIES),
                   help="policy templates, {f} = the budget, e.g. 'macs:{f},cap=0.5'")
    p.add_argument("--out", default="benchmarks/results/layer_budget")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = []
    for m in args.models:
        for b in args.budgets:
            rows += run(m, b, args.batches, args.runtime, args.rounds, args.multiple, tuple(args.policies))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": 1, "args": vars(args), "seconds": round(time.perf_counter() - t0)}
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1))
    labels = [_name(t) for t in args.policies]
    title = " vs ".join(NAMES.get(k, k) for k in labels)
    md = [f"# {title}, side by side (one process)", "",
          f"Random weights, default targets, ranks in multiples of {args.multiple}, `split=\"macs\"`, {args.runtime}, "
          f"1 thread, {args.rounds} interleaved rounds (median of per-round ratios vs dense), torch "
          f"{torch.__version__}, {meta['seconds']} s. Ratios only. Energy kept: share of the targeted layers' "
          f"Σ S² (random weights: flat spectra).", "",
          "| model | budget | batch | policy | MAC ratio | latency ratio | realized | energy kept |",
          "|---|---:|---:|---|---:|---:|---:|---:|"]
    md += [f"| {r['model']} | {r['budget']:g} | {r['batch']} | {r['policy']} | {r['mac_ratio']:.2f} | "
           f"{r['latency_ratio']:.2f} | {r['realized']:.2f} | {r['energy_kept']:.3f} |" for r in rows]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    keys = sorted({(r["model"], r["budget"], r["batch"]) for r in rows}, key=lambda k: (k[0], k[1], -k[2]))
    series = {name: [next((r["realized"] for r in rows if (r["model"], r["budget"], r["batch"]) == k
                           and r["policy"] == pol), 0.0) for k in keys]
              for pol, name in ((k, NAMES.get(k, k)) for k in labels)}
    bar_figure(out.with_suffix(".png"), [f"{m}\n{b:g}, b{bt}" for m, b, bt in keys], series,
               f"{args.runtime}, 1 thread, multiple {args.multiple}", hlines=(0.7, 0.5), fontsize=7)

if __name__ == "__main__":
    main()

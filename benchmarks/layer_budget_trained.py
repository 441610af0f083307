"""LayerBudget vs MacBudget on *trained* spectra: accuracy and measured speed at equal MAC budgets
(issue 9; the allocation question ``benchmarks/layer_budget.py`` leaves open on random weights).

For each trained run folder and budget ``f``: ranks from ``macs:f`` and ``layer:f`` (the run's
targets, the named head kept dense for both, ``--multiple``), one-shot truncation, then the same
short fine-tune for both (adam lr 1e-4 on the training split). Cells: validation / test accuracy
(test reported, never used to pick), MACs kept, and the latency ratio vs dense timed side by side
(ONNX Runtime, 1 thread, batch ``--batch``, interleaved rounds; ratios only).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/layer_budget_trained.py \\
        --runs runs/fcn_d3:layers.6 runs/r20_d3:linear --out benchmarks/results/layer_budget_trained

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import lorita
from lorita.finetune import FinetuneConfig
from lorita.finetune import finetune as finetune_model
from lorita.io import atomic_write_text
from lorita.ranks.policies import parse_policy
from lorita.runs.folder import load_run, make_loaders, model_row
from lorita.timing import BenchmarkTimer


def run_one(run_dir: str, head: str, budgets: list[float], multiple: int, ft_epochs: int, batch: int,
            rounds: int, policies: list[str]) -> list[dict]:
    run = load_run(run_dir, None)
    target, _ = run.targets
    dense_row = model_row(run, run.dense, "dense", None)
    train, _, _ = make_loaders(run.data, run.cfg)
    x = torch.randn((batch, *run.example_inputs.shape[1:]), generator=torch.Generator().manual_seed(0))
    rows = [{"run": run_dir, "policy": "dense", "budget": 1.0, "val": dense_row["val_acc"],
             "test": dense_row["test_acc"], "macs_frac": 1.0}]
    for f in budgets:
        for template in policies:
            kind = template.replace(":{f}", "")
            pol = parse_policy(template.format(f=f), example_inputs=run.example_inputs)
            try:
                ranks = lorita.select_ranks(run.dense, pol, target, head, multiple=multiple)
            except ValueError as exc:
                print(f"{run_dir} {kind}:{f}: {exc}", flush=True)
                continue
            low = lorita.to_low_rank(run.dense, ranks)
            one = model_row(run, low, f"{kind}:{f}", ranks)
            tuned = copy.deepcopy(low)
            finetune_model(tuned, train, FinetuneConfig(epochs=ft_epochs), seed=run.cfg.seed, progress=False)
            tuned.eval()
            ftr = model_row(run, tuned, f"{kind}:{f} + ft", ranks)
            cmp = lorita.compare_latency({"dense": run.dense, "low": low}, x, runtime="onnxruntime", rounds=rounds,
                                         timer=BenchmarkTimer(min_run_time=0.02, warmup=1, best=True))
            row = {"run": run_dir, "policy": kind, "budget": f, "macs_frac": round(one["macs_frac"], 4),
                   "val": one["val_acc"], "test": one["test_acc"], "ft_val": ftr["val_acc"], "ft_test": ftr["test_acc"],
                   "latency_ratio": round(cmp.speedup["low"], 3), "ranks": ranks}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "ranks"}), flush=True)
    return rows


def _flags(args: argparse.Namespace) -> str:
    def text(v: object) -> str:
        return " ".join(map(str, v)) if isinstance(v, list) else str(v)

    return " ".join(f"--{k.replace('_', '-')} {text(v)}" for k, v in vars(args).items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="RUN_DIR:HEAD (the head is kept dense)")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3, 0.2])
    p.add_argument("--multiple", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--policies", nargs="+", default=["macs:{f}", "layer:{f}"],
                   help="policy templates, {f} = the budget, e.g. 'macs:{f},cap=0.5'")
    p.add_argument("--out", default="benchmarks/results/layer_budget_trained")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = []
    for spec in args.runs:
        run_dir, _, head = spec.rpartition(":")
        rows += run_one(run_dir, head, args.budgets, args.multiple, args.finetune_epochs, args.batch, args.rounds,
                        args.policies)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": 1, "args": vars(args), "seconds": round(time.perf_counter() - t0)}
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1))
    title = ("LayerBudget vs MacBudget" if args.policies == ["macs:{f}", "layer:{f}"]
             else " vs ".join(t.replace(":{f}", "") for t in args.policies))
    md = [f"# {title} on trained spectra", "",
          f"Command: `python benchmarks/layer_budget_trained.py {_flags(args)}`. "
          f"Heads kept dense; ranks in multiples of {args.multiple}; fine-tune: {args.finetune_epochs} epoch(s) adam "
          f"lr 1e-4, training split, the same for all. Latency ratio: dense / low-rank, ONNX Runtime, 1 thread, "
          f"batch {args.batch}, {args.rounds} interleaved rounds (one-shot model; fine-tuning keeps the shapes). "
          f"{meta['seconds']} s.", "",
          "| run | budget | policy | % MACs | val % one-shot | test % one-shot | val % + ft | test % + ft "
          "| latency ratio |",
          "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["policy"] == "dense":
            md.append(f"| {r['run']} | dense | – | 100 | {100 * r['val']:.2f} | {100 * r['test']:.2f} | – | – | 1.00 |")
            continue
        md.append(f"| {r['run']} | {r['budget']:g} | {r['policy']} | {100 * r['macs_frac']:.1f} | "
                  f"{100 * r['val']:.2f} | {100 * r['test']:.2f} | {100 * r['ft_val']:.2f} | "
                  f"{100 * r['ft_test']:.2f} | {r['latency_ratio']:.2f} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")


if __name__ == "__main__":
    main()

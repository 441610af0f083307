"""Can fine-tuning with distillation close the gap to 98.2% test accuracy at <= 5% of the weights?

Issue 2's target for the MNIST FCN 784-512-512-512-10. `benchmarks/mnist_fcn.py` reached 98.06%
(depth 2, 10 epochs of Adam 1e-4 after one-shot truncation). Here every trained run of that
benchmark (same runs, `--runs`) is truncated with ParamBudget(0.05) and fine-tuned longer, with
knowledge distillation from its own dense merged model (lorita.finetune + DistillConfig), over a
small grid of learning rates. Per depth the (weight decay, lr) pair is picked on the 5,000-image
validation split; test accuracy is reported once, never used.

    python benchmarks/mnist_5pct_finetune.py --depths 1 2 --threads 1 &   # shards, in parallel
    python benchmarks/mnist_5pct_finetune.py --depths 3 --threads 1
    python benchmarks/mnist_5pct_finetune.py --collect                   # results.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lorita.finetune import DistillConfig, FinetuneConfig, finetune
from lorita.ranks.policies import ParamBudget, select_ranks
from lorita.runs.folder import load_run, make_loaders, model_row
from lorita.surgery import to_low_rank

BUDGET = 0.05


def run_shard(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for depth in args.depths:
        rows = []
        for wd in args.wds:
            run = load_run(Path(args.runs) / f"sgd_d{depth}_wd{wd}_e20")
            ranks = select_ranks(run.dense, ParamBudget(BUDGET), *run.targets)
            train, _, _ = make_loaders(run.data, run.cfg)
            for lr in args.lrs:
                low = to_low_rank(run.dense, ranks)
                cfg = FinetuneConfig(epochs=args.epochs, optimizer="adam", lr=lr,
                                     distill=DistillConfig(args.temperature, args.distill_weight))
                t0 = time.perf_counter()
                finetune(low, train, cfg, teacher=run.dense.eval(), seed=0)
                row = model_row(run, low, f"depth {depth} wd {wd} lr {lr:g}", ranks)
                row.update(depth=depth, weight_decay=float(wd), lr=lr, seconds=time.perf_counter() - t0)
                rows.append(row)
                print(f"depth {depth} wd {wd} lr {lr:g}: val {row['val_acc']:.4f}", flush=True)
        (out / f"depth{depth}.json").write_text(json.dumps(rows, indent=2) + "\n")


def collect(args: argparse.Namespace) -> None:
    out = Path(args.out)
    rows = [r for f in sorted(out.glob("depth*.json")) for r in json.loads(f.read_text())]
    prev = json.loads(Path(args.previous).read_text())
    picked = {}
    for r in rows:
        d = r["depth"]
        if d not in picked or r["val_acc"] > picked[d]["val_acc"]:
            picked[d] = r
    ft10 = {r["depth"]: r for r in prev["finetuned"] if abs(r["budget"] - BUDGET) < 1e-9}
    res = {"budget": BUDGET, "epochs": args.epochs, "temperature": args.temperature,
           "distill_weight": args.distill_weight, "picked": picked, "rows": rows,
           "command": "python benchmarks/mnist_5pct_finetune.py --depths D [--wds ...] (one process per shard, "
                      "--threads 1), then --collect"}
    (out / "results.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    lines = [
        "# MNIST FCN at <= 5% of the weight params: longer fine-tuning with distillation",
        "",
        f"One-shot ParamBudget({BUDGET}) truncation of each run of `benchmarks/mnist_fcn.py`, then "
        f"{args.epochs} epochs of Adam with distillation from the run's own dense merged model "
        f"(T = {args.temperature:g}, soft-target weight {args.distill_weight:g}); grid: weight decay of the run "
        f"x lr. Picked per depth on validation; test reported once. Target (issue 2): 98.2% test. "
        "Standard error of a test accuracy near 98% on 10,000 images: about 0.14 points; of a validation "
        "accuracy on 5,000: about 0.2 points.",
        "",
        "| depth | picked wd / lr | weight params | 10-ep FT, no distill: val / test % | "
        f"{args.epochs}-ep FT + distill: val / test % |",
        "|---:|---:|---:|---:|---:|",
    ]
    for d in sorted(picked):
        r, p = picked[d], ft10.get(d)
        old = "–" if p is None else f"{100 * p['val_acc']:.2f} / {100 * p['test_acc']:.2f}"
        lines.append(f"| {d} | {r['weight_decay']:g} / {r['lr']:g} | {r['weight_params']:,} | {old} | "
                     f"{100 * r['val_acc']:.2f} / **{100 * r['test_acc']:.2f}** |")
    lines += ["", "Every configuration:", "", "| depth | wd | lr | val % | test % | seconds |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['depth']} | {r['weight_decay']:g} | {r['lr']:g} | {100 * r['val_acc']:.2f} | "
                     f"{100 * r['test_acc']:.2f} | {r['seconds']:.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ds = sorted(picked)
    ax.bar([d - 0.2 for d in ds], [100 * ft10[d]["test_acc"] if d in ft10 else 0 for d in ds], 0.4,
           label="10-ep fine-tune")
    ax.bar([d + 0.2 for d in ds], [100 * picked[d]["test_acc"] for d in ds], 0.4,
           label=f"{args.epochs}-ep fine-tune + distill")
    ax.axhline(98.2, color="k", ls="--", lw=1, label="target 98.2%")
    ax.set_ylim(96.5, 98.8)
    ax.set_xticks(ds, [f"depth {d}" for d in ds])
    ax.set_ylabel("test accuracy (%) at 5% of weights")
    ax.legend(fontsize=8)
    fig.savefig(out / "results.png", dpi=120, bbox_inches="tight")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/bench_mnist_fcn", help="run folders of benchmarks/mnist_fcn.py")
    ap.add_argument("--previous", default="benchmarks/results/mnist_fcn.json")
    ap.add_argument("--out", default="benchmarks/results/mnist_5pct_finetune")
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--wds", nargs="+", default=["1e-4", "3e-4", "1e-3", "2e-3", "5e-3"])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--distill-weight", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--collect", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    collect(args) if args.collect else run_shard(args)


if __name__ == "__main__":
    main()

"""MNIST FCN: LoRITa depth 1 vs 2 vs 3, each with the same weight-decay grid, picked on validation.

A fair fight (issue 2): every depth gets the same optimizer, schedule, epochs and grid of weight
decays. For every params budget, each depth's weight decay is chosen by *validation* accuracy of
the truncated model at that budget; its test accuracy is reported once. Ranks come from
``ParamBudget`` (one-shot, no fine-tuning).

Usage (resumable: finished runs are reused)::

    .venv/bin/python benchmarks/mnist_fcn.py --epochs 20 --out benchmarks/runs/mnist_fcn \
        --results benchmarks/results/mnist_fcn

Writes ``<results>.json``, ``<results>.md`` and ``<results>.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from lorita.finetune import FinetuneConfig, finetune
from lorita.io import atomic_write_text
from lorita.runs.config import TrainConfig
from lorita.runs.folder import load_data, load_run, make_loaders, model_row
from lorita.runs.plots import plot_sweeps
from lorita.runs.sweep import sweep_run
from lorita.runs.train import train_run
from lorita.surgery import to_low_rank

BUDGETS = [0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5]


def _tag(wd: float) -> str:
    return f"{wd:.0e}".replace("e-0", "e-")


def run_grid(args: argparse.Namespace) -> dict:
    base = TrainConfig(
        optimizer=args.optimizer, lr=args.lr, momentum=0.9, epochs=args.epochs, batch_size=args.batch_size,
        scheduler="cosine", seed=args.seed, decay=args.decay,
    )
    data = load_data(base)
    out = Path(args.out)
    runs = []
    for depth in args.depths:
        for wd in args.wds:
            cfg = TrainConfig(**{**base.to_dict(), "depth": depth, "weight_decay": wd})
            run_dir = out / f"{args.optimizer}_d{depth}_wd{_tag(wd)}_e{args.epochs}"
            summary_file = run_dir / "summary.json"
            sweep_file = run_dir / "sweep-params" / "sweep.json"
            t0 = time.perf_counter()
            if not summary_file.is_file():
                train_run(cfg, run_dir, progress=not args.no_progress, resume=True, data=data)
            summary = json.loads(summary_file.read_text())
            if not sweep_file.is_file():
                sweep_run(run_dir, "params", BUDGETS, sweep_file.parent, progress=False,
                          run=load_run(run_dir, data=data))
            sweep = json.loads(sweep_file.read_text())
            runs.append({"depth": depth, "weight_decay": wd, "summary": summary, "sweep": sweep})
            logging.info("depth %d wd %g: dense val %.4f (%.0fs)", depth, wd, sweep["dense"]["val_acc"],
                         time.perf_counter() - t0)
    return {"config": base.to_dict(), "wds": args.wds, "depths": args.depths, "budgets": BUDGETS, "runs": runs}


def fronts(grid: dict) -> dict[int, list[dict]]:
    """Per depth and budget, the weight decay with the best validation accuracy (ties: smaller wd)."""
    out: dict[int, list[dict]] = {}
    for depth in grid["depths"]:
        rows = []
        runs = [r for r in grid["runs"] if r["depth"] == depth]
        for b in [None, *grid["budgets"]]:
            cands = []
            for r in runs:
                pt = r["sweep"]["dense"] if b is None else next(
                    (p for p in r["sweep"]["points"] if abs(p["point"] - b) < 1e-12), None)
                if pt is not None:
                    cands.append((pt["val_acc"], -r["weight_decay"], r["weight_decay"], pt))
            if not cands:
                continue
            val, _, wd, pt = max(cands, key=lambda c: (c[0], c[1]))
            rows.append({"budget": b, "weight_decay": wd, "val_acc": val, "test_acc": pt["test_acc"],
                         "weight_params": pt["weight_params"], "weight_params_frac": pt["weight_params_frac"],
                         "ranks": pt.get("ranks")})
        out[depth] = rows
    return out


def finetune_rows(args: argparse.Namespace, grid: dict, data) -> tuple[list[dict], list[dict]]:
    """At each budget in ``args.finetune_budgets``, every run's one-shot low-rank model is
    fine-tuned in place on the training split (lorita.finetune, the same settings for all), then
    per depth the weight decay is picked on *validation* accuracy after fine-tuning.

    Returns:
        (picked rows, all rows). Test accuracy is reported, never used.
    """
    every = []
    ft = FinetuneConfig(epochs=args.finetune_epochs, optimizer="adam", lr=args.finetune_lr)
    for budget in args.finetune_budgets:
        for r in grid["runs"]:
            depth, wd = r["depth"], r["weight_decay"]
            pt = next((p for p in r["sweep"]["points"] if abs(p["point"] - budget) < 1e-12), None)
            if pt is None:
                continue
            run_dir = Path(args.out) / f"{args.optimizer}_d{depth}_wd{_tag(wd)}_e{args.epochs}"
            run = load_run(run_dir, data=data)
            low = to_low_rank(run.dense, pt["ranks"])
            train, _, _ = make_loaders(data, run.cfg)
            t0 = time.perf_counter()
            finetune(low, train, ft, seed=args.seed)
            row = model_row(run, low, f"depth {depth} wd {wd:g} @ {budget:.1%} + fine-tune", pt["ranks"])
            row.update({"depth": depth, "budget": budget, "weight_decay": wd,
                        "one_shot_val_acc": pt["val_acc"], "one_shot_test_acc": pt["test_acc"],
                        "finetune_seconds": time.perf_counter() - t0,
                        "finetune": {"epochs": ft.epochs, "optimizer": ft.optimizer, "lr": ft.lr}})
            every.append(row)
            logging.info("fine-tuned depth %d wd %g at %.3f: val %.4f", depth, wd, budget, row["val_acc"])
    picked = []
    for budget in args.finetune_budgets:
        for depth in grid["depths"]:
            cands = [r for r in every if r["depth"] == depth and r["budget"] == budget]
            if cands:
                picked.append(max(cands, key=lambda r: (r["val_acc"], -r["weight_decay"])))
    return picked, every


def markdown(grid: dict, fr: dict[int, list[dict]], cmd: str, ft_rows: list[dict] | None = None) -> str:
    cfg = grid["config"]
    lines = [
        "# MNIST FCN 784-512-512-512-10: LoRITa depth 1 / 2 / 3, tuned weight decay",
        "",
        f"Command: `{cmd}`",
        "",
        f"Every depth: {cfg['optimizer']} (momentum {cfg['momentum']}), lr {cfg['lr']}, cosine, "
        f"{cfg['epochs']} epochs, "
        f"batch {cfg['batch_size']}, seed {cfg['seed']}, decay `{cfg['decay']}`; weight-decay grid {grid['wds']}. "
        "Per budget the weight decay is picked on the 5,000-image validation split (truncated model's val "
        "accuracy); test accuracy reported once. Budget = deployable weight params of the 4 Linear layers / "
        "930,816 (ParamBudget, one-shot SVD truncation, no fine-tuning).",
        "",
        "| budget | " + " | ".join(f"depth {d}: wd / val % / test %" for d in fr) + " |",
        "|---:|" + "---:|" * len(fr),
    ]
    budgets = [None, *grid["budgets"]]
    for b in budgets:
        cells = []
        for d in fr:
            r = next((x for x in fr[d] if x["budget"] == b), None)
            cells.append("–" if r is None else f"{r['weight_decay']:g} / {100 * r['val_acc']:.2f} / "
                         f"**{100 * r['test_acc']:.2f}**")
        lines.append(f"| {'dense' if b is None else f'{b:.1%}'} | " + " | ".join(cells) + " |")
    lines += ["", "## Every run (dense accuracy, and test accuracy at 5% / 10% of weight params)", "",
              "| depth | wd | dense val % | dense test % | test % @5% | test % @10% | train s |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in grid["runs"]:
        pts = {p["point"]: p for p in r["sweep"]["points"]}
        at = {b: f"{100 * pts[b]['test_acc']:.2f}" if b in pts else "–" for b in (0.05, 0.1)}
        lines.append(f"| {r['depth']} | {r['weight_decay']:g} | {100 * r['sweep']['dense']['val_acc']:.2f} | "
                     f"{100 * r['sweep']['dense']['test_acc']:.2f} | {at[0.05]} | {at[0.1]} | "
                     f"{r['summary']['wall_seconds']:.0f} |")
    if ft_rows:
        ft = ft_rows[0]["finetune"]
        lines += ["", f"## One-shot + fine-tuning ({ft['epochs']} epochs, {ft['optimizer']} lr {ft['lr']:g}, low-rank "
                  "model trained in place on the training split; same for every depth and weight decay; the "
                  "weight decay picked on validation accuracy after fine-tuning)", "",
                  "| depth | budget | wd (picked on val) | weight params | one-shot val / test % | "
                  "fine-tuned val / test % | fine-tune s |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in ft_rows:
            lines.append(f"| {r['depth']} | {r['budget']:.1%} | {r['weight_decay']:g} | {r['weight_params']:,} | "
                         f"{100 * r['one_shot_val_acc']:.2f} / {100 * r['one_shot_test_acc']:.2f} | "
                         f"{100 * r['val_acc']:.2f} / **{100 * r['test_acc']:.2f}** | {r['finetune_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--wds", type=float, nargs="+", default=[1e-5, 1e-4, 3e-4, 1e-3, 2e-3, 5e-3])
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--decay", default="all")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/runs/mnist_fcn")
    p.add_argument("--results", default="benchmarks/results/mnist_fcn")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--finetune-epochs", type=int, default=10, help="fine-tune every run's low-rank model (0: skip)")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--finetune-budgets", type=float, nargs="+", default=[0.03, 0.05])
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    grid = run_grid(args)
    fr = fronts(grid)
    ft_rows, ft_all = finetune_rows(args, grid, load_data(TrainConfig())) if args.finetune_epochs else ([], [])
    res = Path(args.results)
    res.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/mnist_fcn.py " + " ".join(
        [f"--depths {' '.join(map(str, args.depths))}", f"--wds {' '.join(f'{w:g}' for w in args.wds)}",
         f"--optimizer {args.optimizer}", f"--lr {args.lr:g}", f"--epochs {args.epochs}", f"--seed {args.seed}",
         f"--finetune-epochs {args.finetune_epochs}", f"--finetune-lr {args.finetune_lr:g}",
         f"--finetune-budgets {' '.join(f'{b:g}' for b in args.finetune_budgets)}"])
    payload = {"command": cmd, "fronts": {str(k): v for k, v in fr.items()}, "finetuned": ft_rows,
               "finetuned_all": ft_all,
               "grid": {**grid, "runs": [{**r, "sweep": {**r["sweep"], "points": r["sweep"]["points"]}}
                                         for r in grid["runs"]]}}
    atomic_write_text(res.with_suffix(".json"), json.dumps(payload, indent=1, sort_keys=True) + "\n")
    atomic_write_text(res.with_suffix(".md"), markdown(grid, fr, cmd, ft_rows))
    # Fronts as pseudo-sweeps for the shared plotting helper.
    sweeps = []
    for d, rows in fr.items():
        dense = next(r for r in rows if r["budget"] is None)
        pts = [{**r, "point": r["budget"]} for r in rows if r["budget"] is not None]
        sweeps.append({"policy": "params", "depth": d, "dense": dense, "points": pts})
    plot_sweeps(sweeps, res.with_suffix(".png"), labels=[f"depth {d} (wd picked on val)" for d in fr],
                title="MNIST FCN: test accuracy vs weight params kept (dotted: best dense)")
    print(markdown(grid, fr, cmd, ft_rows))


if __name__ == "__main__":
    main()

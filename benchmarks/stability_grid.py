"""Divergence grid under the CLI defaults (issue 10 target: 0 diverged runs).

MNIST FCN, 2 epochs on 20,000 training images, batch 128, SGD momentum 0.9 cosine, ``decay="all"``,
one CPU thread, every other knob at :class:`lorita.runs.config.TrainConfig`'s defaults (= the
``lorita train`` defaults: the factor start, factor side and gradient clipping chosen in
``benchmarks/results/lorita_starts.md``). Grid: lr {0.02, 0.05, 0.1} × weight decay
{1e-4, 1e-3, 5e-3} × depth {2, 3, 4} × seeds {0, 1, 2} = 81 runs. A run *diverged* if training
raised ``FloatingPointError`` (non-finite loss) or ended with a non-finite merged weight.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stability_grid.py

Writes benchmarks/results/stability_grid.{json,md,png}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lorita_starts import RESULTS, run_one  # benchmarks/ is on sys.path when run as a script

from lorita.runs.config import TrainConfig
from lorita.runs.folder import load_data

BASE = dict(model="fcn", dataset="mnist", limit_train=20000, epochs=2, optimizer="sgd", momentum=0.9,
            scheduler="cosine", batch_size=128)
LRS, WDS, DEPTHS, SEEDS = (0.02, 0.05, 0.1), (1e-4, 1e-3, 5e-3), (2, 3, 4), (0, 1, 2)


def write(rows: list[dict], meta: dict) -> None:
    cells = []
    for depth, lr, wd in itertools.product(DEPTHS, LRS, WDS):
        rs = [r for r in rows if (r["depth"], r["lr"], r["weight_decay"]) == (depth, lr, wd)]
        if not rs:
            continue
        accs = [r["val_acc"] for r in rs if not r["diverged"]]
        cells.append({"depth": depth, "lr": lr, "weight_decay": wd, "runs": len(rs),
                      "diverged": sum(r["diverged"] for r in rs),
                      "val_acc_mean": statistics.mean(accs) if accs else None,
                      "val_acc_min": min(accs) if accs else None})
    total_div = sum(c["diverged"] for c in cells)
    (RESULTS / "stability_grid.json").write_text(json.dumps({"meta": meta, "cells": cells, "runs": rows,
                                                             "diverged_total": total_div}, indent=1))
    lines = ["# Stability grid under the CLI defaults — MNIST FCN, 2 epochs, 20k images", "",
             f"Defaults: {meta['defaults']}. {len(rows)} runs, **{total_div} diverged**.", "",
             "| depth | lr | wd | runs | diverged | val acc mean (min) |", "|---|---|---|---|---|---|"]
    for c in cells:
        acc = "—" if c["val_acc_mean"] is None else f"{100 * c['val_acc_mean']:.2f}% ({100 * c['val_acc_min']:.2f})"
        lines.append(f"| {c['depth']} | {c['lr']} | {c['weight_decay']} | {c['runs']} | {c['diverged']} | {acc} |")
    lines += ["", meta["note"]]
    (RESULTS / "stability_grid.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(DEPTHS), figsize=(12, 3.6))
        for ax, depth in zip(axes, DEPTHS):
            grid = [[next((100 * c["val_acc_mean"] if c["val_acc_mean"] is not None else float("nan")
                           for c in cells if (c["depth"], c["lr"], c["weight_decay"]) == (depth, lr, wd)),
                          float("nan")) for wd in WDS] for lr in LRS]
            im = ax.imshow(grid, vmin=80, vmax=100, cmap="viridis")
            for i, j in itertools.product(range(len(LRS)), range(len(WDS))):
                ax.text(j, i, f"{grid[i][j]:.1f}", ha="center", va="center", color="w", fontsize=8)
            ax.set_xticks(range(len(WDS)), [str(w) for w in WDS])
            ax.set_yticks(range(len(LRS)), [str(lr) for lr in LRS])
            ax.set_xlabel("weight decay")
            ax.set_ylabel("lr")
            ax.set_title(f"depth {depth}: mean val acc (%)")
        fig.colorbar(im, ax=axes, shrink=0.8)
        fig.savefig(RESULTS / "stability_grid.png", dpi=110, bbox_inches="tight")
    except ImportError:
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--limit-train", type=int, default=20000)
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    base = {**BASE, "limit_train": args.limit_train}
    data = load_data(TrainConfig(**base))
    d = TrainConfig()
    defaults = {k: getattr(d, k) for k in ("init", "init_scale", "factor_side", "clip_grad_norm")}
    meta = {"defaults": ", ".join(f"{k}={v}" for k, v in defaults.items()), "limit_train": args.limit_train,
            "threads": 1, "note": f"{args.limit_train} training images, validation = the CLI split's 5,000 "
                                  "held-out images; seeds 0–2 per cell."}
    rows: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for depth, lr, wd, seed in itertools.product(DEPTHS, LRS, WDS, SEEDS):
            cfg = TrainConfig(**base, depth=depth, lr=lr, weight_decay=wd, seed=seed)
            assert all(getattr(cfg, k) == v for k, v in defaults.items())
            r = {"depth": depth, "lr": lr, "weight_decay": wd, "seed": seed, **run_one(cfg, data, Path(tmp))}
            r.pop("ranks99", None)
            rows.append(r)
            print(json.dumps(r), flush=True)
            write(rows, {**meta, "elapsed_s": time.perf_counter() - t0})


if __name__ == "__main__":
    main()

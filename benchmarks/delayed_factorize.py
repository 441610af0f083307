"""Factorize late (issue 10): plain training first, LoRITa for the rest of the same epoch budget.

At 15 epochs on CIFAR-10 ResNet-20 a depth-2/3 model trained from scratch ends 3-4 points under
depth 1 (``fronts_resnet20.md``): the factor chain fits more slowly. Here the epoch budget is split:
``K`` epochs of plain (depth 1) training, then ``lorita train --init-from`` that model at depth
``N`` with the balanced start (the merged model equals the plain one at the switch) for the
remaining ``15 − K`` epochs (a second cosine schedule with its 1-epoch warm-up), then the fronts'
protocol: one-shot ``MacBudget`` truncation, the same 1-epoch fine-tune, test reported, nothing
picked on test. Compared with depth 1 and depth 2 trained from scratch for all 15 epochs
(``fronts_resnet20.json``, same subset, recipe and seed).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/delayed_factorize.py --switch 5 &
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/delayed_factorize.py --switch 10 --scratch 1 2
    .venv/bin/python benchmarks/delayed_factorize.py --report      # table from the cached runs

Writes ``benchmarks/results/delayed_factorize.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from fronts import FAMILIES, front_figure, run_one

from lorita.finetune import FinetuneConfig
from lorita.io import atomic_write_text
from lorita.runs.config import TrainConfig
from lorita.runs.folder import load_data
from lorita.runs.train import train_run

RESULTS = Path(__file__).parent / "results"
OUT = Path("benchmarks/runs/delayed")
FAM = FAMILIES["resnet20"]
TOTAL, WD, LIMIT, BUDGETS = 15, 2e-3, 15000, [0.5, 0.3, 0.2]


def run_switch(k: int, depth: int, data) -> dict:
    """Plain training for ``k`` epochs, then depth ``depth`` for ``TOTAL - k`` (cached)."""
    base = {**FAM["cfg"], "limit_train": LIMIT, "weight_decay": WD}
    plain = OUT / f"plain_e{k}"
    if not (plain / "summary.json").is_file():
        train_run(TrainConfig(**{**base, "depth": 1, "epochs": k}), plain, progress=False, resume=True, data=data)
    cfg = TrainConfig(**{**base, "depth": depth, "epochs": TOTAL - k, "init": "balanced", "init_from": str(plain)})
    res = run_one(cfg, OUT / f"switch{k}_d{depth}", BUDGETS, FinetuneConfig(**FAM["finetune"]), data)
    res["switch"] = k
    return res


def run_scratch(depth: int, data) -> dict:
    """Depth ``depth`` from scratch for all ``TOTAL`` epochs, same recipe (cached)."""
    base = {**FAM["cfg"], "limit_train": LIMIT, "weight_decay": WD}
    cfg = TrainConfig(**{**base, "depth": depth, "epochs": TOTAL})
    res = run_one(cfg, OUT / f"scratch_d{depth}", BUDGETS, FinetuneConfig(**FAM["finetune"]), data)
    res["switch"] = None
    return res


def _pt(p: dict) -> str:
    return f"{100 * p['val_acc']:.2f} / {100 * p['test_acc']:.2f}"


def report(runs: list[dict]) -> None:
    fronts = json.loads((RESULTS / "fronts_resnet20.json").read_text())
    ref = [r for r in fronts["runs"] if r["weight_decay"] == WD and r["depth"] in (1, 2)]
    rows = [(f"depth {r['depth']} from scratch, {TOTAL} ep", r) for r in runs if r["switch"] is None]
    rows += [(f"depth 1 {r['switch']} ep → depth {r['depth']} {TOTAL - r['switch']} ep", r)
             for r in runs if r["switch"] is not None]
    rows += [(f"depth {r['depth']} from scratch, {TOTAL} ep (fronts_resnet20.json, another machine)", r) for r in ref]
    lines = ["# Factorize late: plain training first, then LoRITa, same 15-epoch budget (CIFAR-10 ResNet-20)", "",
             f"First {LIMIT:,} training images, SGD lr 0.05 momentum 0.9 cosine (each phase its own cosine with a "
             f"1-epoch warm-up), wd {WD:g}, augmentation, label smoothing 0.1, seed 0; then `MacBudget` one-shot "
             "truncation and the same 1-epoch Adam 1e-4 fine-tune (the fronts' protocol). The same recipe on "
             "another machine (`fronts_resnet20.json`, last rows) gives a different trajectory (float rounding): "
             "compare rows of one machine. Cells: val % / test %.", "",
             "| run | dense | " + " | ".join(f"{b:.0%} one-shot → fine-tuned" for b in BUDGETS) + " |",
             "|---|---|" + "---|" * len(BUDGETS)]
    for name, r in rows:
        cells = [f"{_pt(r['points'][f'{b:g}']['one_shot'])} → {_pt(r['points'][f'{b:g}']['finetuned'])}"
                 for b in BUDGETS]
        lines.append(f"| {name} | {_pt(r['dense'])} | " + " | ".join(cells) + " |")
    lines += ["", "![delayed](delayed_factorize.png)"]
    atomic_write_text(RESULTS / "delayed_factorize.md", "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / "delayed_factorize.json",
                      json.dumps({"total_epochs": TOTAL, "weight_decay": WD, "limit_train": LIMIT,
                                  "budgets": BUDGETS, "runs": runs,
                                  "reference": "benchmarks/results/fronts_resnet20.json"}, indent=1))

    def draw(ax) -> None:
        for i, (name, r) in enumerate(rows):
            pts = sorted((r["points"][f"{b:g}"]["finetuned"]["macs_frac"],
                          100 * r["points"][f"{b:g}"]["finetuned"]["test_acc"]) for b in BUDGETS)
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "-o", color=f"C{i}", label=name + ", fine-tuned")
            ax.axhline(100 * r["dense"]["test_acc"], color=f"C{i}", lw=0.8, ls="--")

    front_figure(draw, "ResNet-20, 15 epochs: factorize late vs from scratch", "test accuracy %",
                 RESULTS / "delayed_factorize.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--switch", type=int, nargs="*", default=[], help="plain epochs K before factorizing")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--scratch", type=int, nargs="*", default=[], help="depths trained from scratch for comparison")
    p.add_argument("--report", action="store_true", help="write the table from every cached run")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    if bad := [k for k in args.switch if not 0 < k < TOTAL]:
        p.error(f"--switch {bad}: must be in 1..{TOTAL - 1}")
    data = load_data(TrainConfig(**{**FAM["cfg"], "limit_train": LIMIT}))
    for k in args.switch:
        run_switch(k, args.depth, data)
    for d in args.scratch:
        run_scratch(d, data)
    if args.report:
        runs = [run_scratch(int(d.name[len("scratch_d"):]), data) for d in sorted(OUT.glob("scratch_d*"))
                if (d / "front.json").is_file()]
        for d in sorted(OUT.glob("switch*_d*")):
            if (d / "front.json").is_file() and (d / "summary.json").is_file():
                k, depth = (int(x) for x in d.name[len("switch"):].split("_d"))
                runs.append(run_switch(k, depth, data))
        report(runs)


if __name__ == "__main__":
    main()

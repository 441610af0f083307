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
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/delayed_factorize.py --seed 1 --switch 5 --scratch 1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/delayed_factorize.py --late 5     # lorita train --factorize-at 5
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


def _sfx(seed: int) -> str:
    return "" if seed == 0 else f"_s{seed}"


def run_switch(k: int, depth: int, data, seed: int = 0) -> dict:
    """Plain training for ``k`` epochs, then depth ``depth`` for ``TOTAL - k`` (cached)."""
    base = {**FAM["cfg"], "limit_train": LIMIT, "weight_decay": WD, "seed": seed}
    plain = OUT / f"plain_e{k}{_sfx(seed)}"
    if not (plain / "summary.json").is_file():
        train_run(TrainConfig(**{**base, "depth": 1, "epochs": k}), plain, progress=False, resume=True, data=data)
    cfg = TrainConfig(**{**base, "depth": depth, "epochs": TOTAL - k, "init": "balanced", "init_from": str(plain)})
    res = run_one(cfg, OUT / f"switch{k}_d{depth}{_sfx(seed)}", BUDGETS, FinetuneConfig(**FAM["finetune"]), data)
    res.update(switch=k, seed=seed)
    return res


def run_late(k: int, depth: int, data, seed: int = 0) -> dict:
    """``lorita train --epochs 15 --factorize-at k``: the same split, one cosine schedule over all
    15 epochs (no second warm-up), as the flag does it (cached)."""
    base = {**FAM["cfg"], "limit_train": LIMIT, "weight_decay": WD, "seed": seed}
    cfg = TrainConfig(**{**base, "depth": depth, "epochs": TOTAL, "factorize_at": k})
    res = run_one(cfg, OUT / f"late{k}_d{depth}{_sfx(seed)}", BUDGETS, FinetuneConfig(**FAM["finetune"]), data)
    res.update(switch=k, seed=seed, schedule="one")
    return res


def run_scratch(depth: int, data, seed: int = 0) -> dict:
    """Depth ``depth`` from scratch for all ``TOTAL`` epochs, same recipe (cached)."""
    base = {**FAM["cfg"], "limit_train": LIMIT, "weight_decay": WD, "seed": seed}
    cfg = TrainConfig(**{**base, "depth": depth, "epochs": TOTAL})
    res = run_one(cfg, OUT / f"scratch_d{depth}{_sfx(seed)}", BUDGETS, FinetuneConfig(**FAM["finetune"]), data)
    res.update(switch=None, seed=seed)
    return res


def _recipe(r: dict) -> str:
    if r["switch"] is None:
        return f"depth {r['depth']} from scratch, {TOTAL} ep"
    if r.get("schedule") == "one":
        return f"`--factorize-at {r['switch']}` depth {r['depth']}: one schedule, {TOTAL} ep"
    return f"depth 1 {r['switch']} ep → depth {r['depth']} {TOTAL - r['switch']} ep, two schedules"


def _mean_sd(xs: list[float]) -> str:
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return f"{m:.2f}"
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
    return f"{m:.2f} ± {sd:.2f}"


def _pt(p: dict) -> str:
    return f"{100 * p['val_acc']:.2f} / {100 * p['test_acc']:.2f}"


def report(runs: list[dict]) -> None:
    fronts = json.loads((RESULTS / "fronts_resnet20.json").read_text())
    ref = [r for r in fronts["runs"] if r["weight_decay"] == WD and r["depth"] in (1, 2)]
    runs = sorted(runs, key=lambda r: (r["switch"] is not None, r.get("schedule") == "one", r["switch"] or 0,
                                       r["depth"], r["seed"]))
    rows = [(f"{_recipe(r)}, seed {r['seed']}", r) for r in runs]
    rows += [(f"depth {r['depth']} from scratch, {TOTAL} ep (fronts_resnet20.json, another machine)", r) for r in ref]
    lines = ["# Factorize late: plain training first, then LoRITa, same 15-epoch budget (CIFAR-10 ResNet-20)", "",
             f"First {LIMIT:,} training images, SGD lr 0.05 momentum 0.9 cosine (each phase its own cosine with a "
             f"1-epoch warm-up), wd {WD:g}, augmentation, label smoothing 0.1, seed 0; then `MacBudget` one-shot "
             "truncation and the same 1-epoch Adam 1e-4 fine-tune (the fronts' protocol). The same recipe on "
             "another machine (`fronts_resnet20.json`, last rows) gives a different trajectory (float rounding): "
             "compare rows of one machine. Seeds change the init and the shuffling, not the data split.", "",
             "## Mean ± sd over seeds (validation %, fine-tuned points)", "",
             "| recipe | seeds | dense | " + " | ".join(f"{b:.0%}" for b in BUDGETS) + " |",
             "|---|---|---|" + "---|" * len(BUDGETS)]
    recipes: dict[str, list[dict]] = {}
    for r in runs:
        recipes.setdefault(_recipe(r), []).append(r)
    for name, rs in recipes.items():
        cells = [_mean_sd([100 * r["points"][f"{b:g}"]["finetuned"]["val_acc"] for r in rs]) for b in BUDGETS]
        lines.append(f"| {name} | {', '.join(str(r['seed']) for r in rs)} | "
                     f"{_mean_sd([100 * r['dense']['val_acc'] for r in rs])} | " + " | ".join(cells) + " |")
    lines += ["", "## Every run (val % / test %)", "",
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
        for i, (name, rs) in enumerate(recipes.items()):
            pts = sorted((sum(r["points"][f"{b:g}"]["finetuned"]["macs_frac"] for r in rs) / len(rs),
                          sum(100 * r["points"][f"{b:g}"]["finetuned"]["test_acc"] for r in rs) / len(rs))
                         for b in BUDGETS)
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "-o", color=f"C{i}", label=f"{name}, fine-tuned (mean of {len(rs)} seeds)")
            ax.axhline(sum(100 * r["dense"]["test_acc"] for r in rs) / len(rs), color=f"C{i}", lw=0.8, ls="--")

    front_figure(draw, "ResNet-20, 15 epochs: factorize late vs from scratch", "test accuracy % (mean over seeds)",
                 RESULTS / "delayed_factorize.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--switch", type=int, nargs="*", default=[], help="plain epochs K before factorizing")
    p.add_argument("--late", type=int, nargs="*", default=[],
                   help="K for `factorize_at` runs (one schedule over all epochs)")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--scratch", type=int, nargs="*", default=[], help="depths trained from scratch for comparison")
    p.add_argument("--seed", type=int, default=0, help="init and shuffling seed (folders of seed S > 0 end in _sS)")
    p.add_argument("--report", action="store_true",
                   help="write the table from the committed JSON plus every run cached under " + str(OUT))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    if bad := [k for k in args.switch + args.late if not 0 < k < TOTAL]:
        p.error(f"--switch/--late {bad}: must be in 1..{TOTAL - 1}")
    data = load_data(TrainConfig(**{**FAM["cfg"], "limit_train": LIMIT}))
    for k in args.switch:
        run_switch(k, args.depth, data, args.seed)
    for k in args.late:
        run_late(k, args.depth, data, args.seed)
    for d in args.scratch:
        run_scratch(d, data, args.seed)
    if args.report:
        report(_collect(data))


def _collect(data) -> list[dict]:
    """Committed runs (seed 0 when unrecorded), replaced or extended by every finished run under ``OUT``."""
    old = RESULTS / "delayed_factorize.json"
    runs = {}
    for r in json.loads(old.read_text())["runs"] if old.is_file() else []:
        r.setdefault("seed", 0)
        runs[(r["switch"], r["depth"], r["seed"], r.get("schedule"))] = r
    for d in sorted(OUT.glob("*_d*")):
        if not ((d / "front.json").is_file() and (d / "summary.json").is_file()):
            continue
        head, _, seed = d.name.partition("_s")
        kind, depth = head.split("_d")
        seed, depth = int(seed or 0), int(depth)
        if kind == "scratch":
            runs[(None, depth, seed, None)] = run_scratch(depth, data, seed)
        elif kind.startswith("late"):
            k = int(kind[len("late"):])
            runs[(k, depth, seed, "one")] = run_late(k, depth, data, seed)
        elif kind.startswith("switch"):
            k = int(kind[len("switch"):])
            runs[(k, depth, seed, None)] = run_switch(k, depth, data, seed)
    return list(runs.values())


if __name__ == "__main__":
    main()

"""ResNet-20 recipe at another weight decay (issue 10): ``--depth 2 --factorize-at 5``, wd WD, 15 epochs
on the first 15,000 CIFAR-10 images, then the fronts' protocol (``MacBudget`` one-shot truncation and
the same 1-epoch Adam 1e-4 fine-tune). Compare with ``delayed_factorize.json`` (same subset, wd 2e-3).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/late_wd.py 0 0.004     # SEED WD; ~50 min on a shared thread
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/late_wd.py 0 0.004 1   # the depth-1 baseline at that wd

    .venv/bin/python benchmarks/late_wd.py --report   # late_wd.{md,png} from the JSONs + delayed_factorize.json

Writes ``benchmarks/results/late_wd<WD>_s<SEED>.json`` (depth 1: ``late_wd<WD>_d1_s<SEED>.json``); the
report compares both depths at both weight decays, the weight decay picked on validation per depth and
point (mean over the seeds both weight decays have), test never used to pick.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from statistics import mean as _mean

import torch
from fronts import FAMILIES, front_figure, run_one

from lorita.finetune import FinetuneConfig
from lorita.io import atomic_write_text
from lorita.runs.config import TrainConfig
from lorita.runs.folder import load_data

RESULTS = Path(__file__).parent / "results"


LIMIT = 15000
BUDGETS = ("0.5", "0.3", "0.2")
POINTS = ("dense", *BUDGETS)


def _acc(r: dict, point: str, split: str) -> float:
    p = r["dense"] if point == "dense" else r["points"][point]["finetuned"]
    return 100 * p[f"{split}_acc"]


def _groups() -> dict[tuple[int, float], dict[int, dict]]:
    """(depth, wd) -> {seed: result}: the wd-2e-3 rows of ``delayed_factorize.json`` (depth 1 from scratch,
    ``--factorize-at 5`` depth 2 one schedule) and every ``late_wd*.json``."""
    groups: dict[tuple[int, float], dict[int, dict]] = {}
    delayed = json.loads((RESULTS / "delayed_factorize.json").read_text())
    for r in delayed["runs"]:
        if (r["depth"], r["switch"], r.get("schedule")) in ((1, None, None), (2, 5, "one")):
            groups.setdefault((r["depth"], delayed["weight_decay"]), {})[r["seed"]] = r
    for f in sorted(RESULTS.glob("late_wd*_s*.json")):
        r = json.loads(f.read_text())
        groups.setdefault((r["depth"], r["weight_decay"]), {})[int(f.stem.rpartition("_s")[2])] = r
    return groups


def _seeds(rs: dict[int, dict]) -> str:
    return ", ".join(map(str, sorted(rs)))


def report() -> None:
    groups = _groups()
    name = {1: "depth 1 from scratch", 2: "`--factorize-at 5 --depth 2`"}
    wds = ", ".join(f"{w:g}" for w in sorted({w for _, w in groups}))
    lines = [f"# ResNet-20, 15 epochs: weight decay {wds}, depth 1 vs the late depth-2 recipe", "",
             "First 15,000 CIFAR-10 training images, the `resnet20` recipe otherwise (SGD lr 0.05, momentum 0.9, "
             "cosine, 1 warm-up epoch, augmentation, label smoothing 0.1); `MacBudget` one-shot truncation, then the "
             "same 1-epoch Adam 1e-4 fine-tune; all runs on one machine. Validation % / test %, fine-tuned points.",
             "", "## Mean over seeds", "", "| run | wd | seeds | " + " | ".join(POINTS) + " |",
             "|---|---|---|" + "---|" * len(POINTS)]
    for (depth, wd), rs in sorted(groups.items()):
        cells = [f"{_mean(_acc(r, p, 'val') for r in rs.values()):.2f} / "
                 f"{_mean(_acc(r, p, 'test') for r in rs.values()):.2f}" for p in POINTS]
        lines.append(f"| {name[depth]} | {wd:g} | {_seeds(rs)} | " + " | ".join(cells) + " |")
    lines += ["", "## Weight decay picked on validation, per depth and point", "",
              "Means over the seeds every weight decay of that depth has; Δ = depth 2 − depth 1 on test, over the "
              "seeds both have (per seed in brackets).",
              "", "| point | depth 1: wd, val / test (seeds) | depth 2: wd, val / test (seeds) | Δ test |",
              "|---|---|---|---|"]
    picked = {}
    for point in POINTS:
        for depth in (1, 2):
            cands = {wd: rs for (d, wd), rs in groups.items() if d == depth}
            seeds = sorted(set.intersection(*(set(rs) for rs in cands.values())))
            wd = max(cands, key=lambda w: _mean(_acc(cands[w][s], point, "val") for s in seeds))
            picked[point, depth] = (wd, {s: cands[wd][s] for s in seeds})
        (w1, r1), (w2, r2) = picked[point, 1], picked[point, 2]
        common = sorted(set(r1) & set(r2))
        per = [_acc(r2[s], point, "test") - _acc(r1[s], point, "test") for s in common]
        cell = [f"{w:g}, {_mean(_acc(r, point, 'val') for r in rs.values()):.2f} / "
                f"{_mean(_acc(r, point, 'test') for r in rs.values()):.2f} ({_seeds(rs)})"
                for w, rs in ((w1, r1), (w2, r2))]
        lines.append(f"| {point} | {cell[0]} | {cell[1]} | {_mean(per):+.2f} ("
                     + ", ".join(f"{x:+.2f}" for x in per) + ") |")
    lines += ["", "![late_wd](late_wd.png)"]
    atomic_write_text(RESULTS / "late_wd.md", "\n".join(lines) + "\n")

    def draw(ax) -> None:
        for i, ((depth, wd), rs) in enumerate(sorted(groups.items())):
            xs = [_mean(r["points"][b]["finetuned"]["macs_frac"] for r in rs.values()) for b in BUDGETS]
            ax.plot(xs, [_mean(_acc(r, b, "test") for r in rs.values()) for b in BUDGETS], "-o", color=f"C{i}",
                    label=f"{name[depth].strip('`')}, wd {wd:g}, fine-tuned ({len(rs)} seeds)")
            ax.axhline(_mean(_acc(r, "dense", "test") for r in rs.values()), color=f"C{i}", lw=0.8, ls="--")

    front_figure(draw, f"ResNet-20, 15 epochs: weight decay {wds}", "test accuracy % (mean over seeds)",
                 RESULTS / "late_wd.png")


def config(seed: int, wd: float, depth: int = 2) -> TrainConfig:
    """The run's config: the fronts' ResNet-20 recipe on the first ``LIMIT`` images, ``wd``, 15 epochs; depth > 1
    factorizes late (``factorize_at=5``), depth 1 trains plain."""
    late = {"factorize_at": 5} if depth > 1 else {}
    return TrainConfig(**{**FAMILIES["resnet20"]["cfg"], "limit_train": LIMIT, "weight_decay": wd, "seed": seed,
                          "depth": depth, "epochs": 15, **late})


def main() -> None:
    if sys.argv[1:] == ["--report"]:
        report()
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    seed, wd = int(sys.argv[1]), float(sys.argv[2])
    depth = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    fam = FAMILIES["resnet20"]
    data = load_data(TrainConfig(**{**fam["cfg"], "limit_train": LIMIT}))
    cfg = config(seed, wd, depth)
    name = f"late5_d{depth}" if depth > 1 else "scratch_d1"
    res = run_one(cfg, Path(f"benchmarks/runs/late_wd/{name}_wd{wd:g}_s{seed}"), [0.5, 0.3, 0.2],
                  FinetuneConfig(**fam["finetune"]), data)
    sfx = "" if depth == 2 else f"_d{depth}"
    atomic_write_text(RESULTS / f"late_wd{wd:g}{sfx}_s{seed}.json", json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

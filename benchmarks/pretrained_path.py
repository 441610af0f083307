"""The pretrained path (issue 10): LoRITa fine-tuning from a trained plain model vs SVD truncation.

One model family per invocation (``--family``), one CPU thread per process. A plain (depth 1)
source model is trained with ``lorita train`` (the family's source recipe). Then, at deployable MAC
budgets of the dense targeted layers (:class:`lorita.MacBudget`, ranks allocated globally by
singular value):

* **SVD + fine-tune** — truncate the source (``to_low_rank``) and fine-tune the low-rank model for
  E epochs (Adam lr 1e-4, :func:`lorita.finetune`);
* **LoRITa** — ``lorita train --init-from SOURCE --depth N`` for the same E epochs with each
  recipe (depth, start, weight decay, lr), merge, truncate at the budget (no further training);
* **LoRITa + fine-tune** — the same followed by the same E-epoch fine-tune (2E epochs in all;
  listed separately, it has twice the epochs).

The recipe is picked per budget on the 5,000-image validation split; test accuracy is reported,
never used to choose. Families:

* ``mnist_fcn``: FCN 784-512-512-512-10, source 3 epochs on the full training split (SGD lr 0.05
  cosine, wd 1e-4), E = 2, budgets {0.3, 0.2, 0.1} → ``results/pretrained_path.*``;
* ``resnet20``: CIFAR-10 ResNet-20, source = the fronts' depth-1 run (15 epochs on the first 15,000
  training images, SGD lr 0.05 cosine, wd 2e-3, augmentation, label smoothing 0.1), E = 3, budgets
  {0.5, 0.3, 0.2} → ``results/pretrained_path_resnet20.*``.

Resumable and splittable: the source and every arm (``svd``, or a recipe's index) are cached under
``benchmarks/runs/pretrained/<family>/``; ``--arms`` runs a subset (e.g. two processes side by
side), and the results are written once every arm is cached::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pretrained_path.py                      # MNIST
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pretrained_path.py --family resnet20 --arms svd 0 &
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pretrained_path.py --family resnet20 --arms 1 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pretrained_path.py --family resnet20   # table
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from fronts import CIFAR_RECIPE

from lorita.finetune import FinetuneConfig, finetune
from lorita.io import atomic_write_text
from lorita.ranks.policies import MacBudget, select_ranks
from lorita.runs.config import TrainConfig
from lorita.runs.folder import load_data, load_run, make_loaders, model_row
from lorita.runs.train import train_run
from lorita.surgery import to_low_rank

RESULTS = Path(__file__).parent / "results"
FT = dict(epochs=None, optimizer="adam", lr=1e-4)  # the fine-tune of either path (E epochs)
#: Per family: the shared recipe (``base``), the source's own fields, budgets, E and the LoRITa
#: recipes (label, depth, init, weight decay, lr). A step shrinks each singular value by about
#: N·lr·wd, so a short fine-tune needs a large product.
FAMILIES: dict[str, dict] = {
    "mnist_fcn": {
        "title": "MNIST FCN", "stem": "pretrained_path",
        "base": dict(model="fcn", dataset="mnist", optimizer="sgd", momentum=0.9, scheduler="cosine", batch_size=128),
        "source": dict(epochs=3, lr=0.05, weight_decay=1e-4),
        "budgets": (0.3, 0.2, 0.1), "epochs": 2,
        "recipes": [  # round 2; round 1 (wd 2e-2..1e-1, lr 0.01..0.03) is in results/pretrained_path_round1.md
            ("balanced wd 5e-3 lr 0.01", 3, "balanced", 5e-3, 0.01),
            ("balanced wd 1e-2 lr 0.01", 3, "balanced", 1e-2, 0.01),
            ("balanced wd 2e-2 lr 0.01", 3, "balanced", 2e-2, 0.01),
            ("balanced wd 2e-2 lr 0.003", 3, "balanced", 2e-2, 0.003),
            ("preserve wd 1e-2 lr 0.01", 3, "preserve", 1e-2, 0.01),
        ],
    },
    "resnet20": {
        "title": "CIFAR-10 ResNet-20", "stem": "pretrained_path_resnet20",
        "base": dict(model="resnet20", optimizer="sgd", momentum=0.9, limit_train=15000, **CIFAR_RECIPE),
        "source": dict(epochs=15, lr=0.05, weight_decay=2e-3),
        "budgets": (0.5, 0.3, 0.2), "epochs": 3, "svd2": True,
        "recipes": [
            ("depth 2 wd 5e-3 lr 0.05", 2, "balanced", 5e-3, 0.05),
            ("depth 2 wd 2e-2 lr 0.05", 2, "balanced", 2e-2, 0.05),
            ("depth 3 wd 5e-3 lr 0.05", 3, "balanced", 5e-3, 0.05),
        ],
    },
}


def points(run, label: str, budgets, ft_epochs: int, extra: dict) -> list[dict]:
    """Rows at every budget: truncated (no fine-tune) and truncated + ``ft_epochs`` fine-tune."""
    rows = []
    train, _, _ = make_loaders(run.data, run.cfg)
    for b in budgets:
        ranks = select_ranks(run.dense, MacBudget(b, run.example_inputs), *run.targets)
        low = to_low_rank(run.dense, ranks)
        r = model_row(run, low, label, ranks)
        rows.append({**extra, **r, "budget": b, "finetune_epochs": 0})
        t0 = time.perf_counter()
        finetune(low, train, FinetuneConfig(**{**FT, "epochs": ft_epochs}), seed=0)
        r = model_row(run, low.eval(), label, ranks)
        rows.append({**extra, **r, "budget": b, "finetune_epochs": ft_epochs, "ft_seconds": time.perf_counter() - t0})
        for row in rows[-2:]:
            logging.info("%s", json.dumps({k: row[k] for k in ("label", "budget", "finetune_epochs", "val_acc",
                                                                 "macs_frac")}))
    return rows


def pick(rows: list[dict], budgets) -> list[dict]:
    """Per budget: the SVD baseline, the best LoRITa recipe (by val, 0 ft epochs) and its + ft row."""
    table = []
    for b in budgets:
        base = next(r for r in rows if r["kind"] == "svd" and r["budget"] == b and r["finetune_epochs"] > 0)
        trunc = next(r for r in rows if r["kind"] == "svd" and r["budget"] == b and r["finetune_epochs"] == 0)
        lor = [r for r in rows if r["kind"] == "lorita" and r["budget"] == b and r["finetune_epochs"] == 0]
        best = max(lor, key=lambda r: r["val_acc"])
        lor_ft = [r for r in rows if r["kind"] == "lorita" and r["budget"] == b and r["finetune_epochs"] > 0]
        best_ft = max(lor_ft, key=lambda r: r["val_acc"])
        long = next((r for r in rows if r["kind"] == "svd2" and r["budget"] == b), None)
        table.append({"budget": b, "svd_truncate": trunc, "svd_finetune": base, "lorita": best,
                      "lorita_finetune": best_ft, "svd_finetune_2e": long})
    return table


def write(fam: dict, rows: list[dict], meta: dict) -> None:
    budgets = fam["budgets"]
    table = pick(rows, budgets)
    stem = RESULTS / fam["stem"]
    atomic_write_text(stem.with_suffix(".json"), json.dumps({"meta": meta, "table": table, "rows": rows}, indent=1))

    def cell(r):
        return f"{100 * r['val_acc']:.2f} / {100 * r['test_acc']:.2f} (MACs {r['macs_frac']:.3f})"

    e = meta["epochs"]
    has2 = all(t["svd_finetune_2e"] is not None for t in table)
    limit = meta["limit_train"]
    data = "the full training split" if limit is None else f"the first {limit:,} training images"
    lines = [f"# Pretrained path — {fam['title']}: LoRITa from a trained plain model vs SVD truncation", "",
             f"Command: `{meta['command']}`", "",
             f"Source: depth 1, {meta['pretrain_epochs']} epochs on {data}, val {100 * meta['source_val']:.2f}% / test "
             f"{100 * meta['source_test']:.2f}%. E = {e} epochs. Cells: val / test accuracy (%), deployable MAC "
             "fraction of the whole model. LoRITa recipe picked on validation per budget.", "",
             f"| MAC budget (targeted) | SVD truncate | SVD + {e} ep fine-tune | LoRITa {e} ep (recipe) | "
             f"LoRITa {e} ep + {e} ep fine-tune (recipe) |"
             + (f" SVD + {2 * e} ep fine-tune |" if has2 else ""), "|---|---|---|---|---|" + ("---|" if has2 else "")]
    for t in table:
        lines.append(f"| {t['budget']} | {cell(t['svd_truncate'])} | {cell(t['svd_finetune'])} | "
                     f"{cell(t['lorita'])} ({t['lorita']['label']}) | {cell(t['lorita_finetune'])} "
                     f"({t['lorita_finetune']['label']}) |" + (f" {cell(t['svd_finetune_2e'])} |" if has2 else ""))
    lines += ["", "All LoRITa recipes (val %; truncated → truncated + fine-tune):", "",
              "| recipe | dense val | " + " | ".join(f"budget {b}" for b in budgets) + " |",
              "|---|---|" + "---|" * len(budgets)]
    for label in dict.fromkeys(r["label"] for r in rows if r["kind"] == "lorita"):
        rs = {(r["budget"], r["finetune_epochs"] > 0): r for r in rows if r["label"] == label}
        dense = next(r["dense_val"] for r in rows if r["label"] == label)
        accs = " | ".join(f"{100 * rs[b, False]['val_acc']:.2f} → {100 * rs[b, True]['val_acc']:.2f}" for b in budgets)
        lines.append(f"| {label} | {100 * dense:.2f} | {accs} |")
    lines += ["", meta["note"]]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, name in (("svd_truncate", "SVD truncate"), ("svd_finetune", f"SVD + {e} ep fine-tune"),
                      ("lorita", f"LoRITa {e} ep"), ("lorita_finetune", f"LoRITa {e} ep + {e} ep ft"),
                      ("svd_finetune_2e", f"SVD + {2 * e} ep fine-tune")):
        if key == "svd_finetune_2e" and not has2:
            continue
        ax.plot([t["budget"] for t in table], [100 * t[key]["test_acc"] for t in table], "o-", label=name)
    ax.set_xlabel("MAC budget of the targeted layers")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{fam['title']} pretrained path")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = stem.with_suffix(".tmp.png")
    fig.savefig(tmp, format="png", dpi=110)
    tmp.replace(stem.with_suffix(".png"))
    plt.close(fig)


def run_arm(arm: str, fam: dict, src: Path, out: Path, data, run) -> list[dict]:
    """Rows of one arm (``"svd"`` or a recipe index), cached in ``out/<arm>.json``."""
    cache = out / f"arm_{arm}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    dense = model_row(run, run.dense, "source")
    if arm == "svd":
        rows = points(run, "SVD", fam["budgets"], fam["epochs"], {"kind": "svd", "dense_val": dense["val_acc"]})
    elif arm == "svd2":  # the baseline with the LoRITa + fine-tune path's 2E epochs
        rows = points(run, "SVD 2E", fam["budgets"], 2 * fam["epochs"], {"kind": "svd2", "dense_val": dense["val_acc"]})
        rows = [r for r in rows if r["finetune_epochs"] > 0]
    else:
        label, depth, init, wd, lr = fam["recipes"][int(arm)]
        cfg = TrainConfig(**{**fam["base"], "depth": depth, "init": init, "init_from": str(src),
                             "epochs": fam["epochs"], "lr": lr, "weight_decay": wd})
        t0 = time.perf_counter()
        summary = train_run(cfg, out / f"lorita{arm}", progress=False, resume=True, data=data)
        lr_run = load_run(out / f"lorita{arm}", data=data)
        extra = {"kind": "lorita", "dense_val": summary["val_acc"], "train_seconds": time.perf_counter() - t0,
                 "recipe": {"init": init, "weight_decay": wd, "lr": lr, "depth": depth,
                            "factor_side": cfg.factor_side, "clip_grad_norm": cfg.clip_grad_norm}}
        rows = points(lr_run, label, fam["budgets"], fam["epochs"], extra)
    atomic_write_text(cache, json.dumps(rows, indent=1))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=sorted(FAMILIES), default="mnist_fcn")
    p.add_argument("--arms", nargs="+", default=None, help="'svd' and/or recipe indices (default: all)")
    p.add_argument("--out", default=None, help="cache folder (default: benchmarks/runs/pretrained/<family>)")
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    fam = FAMILIES[args.family]
    every = ["svd", *map(str, range(len(fam["recipes"])))] + (["svd2"] if fam.get("svd2") else [])
    arms = args.arms or every
    if bad := [a for a in arms if a not in every]:
        p.error(f"--arms {bad}: choose from {every}")
    out = Path(args.out or f"benchmarks/runs/pretrained/{args.family}")
    src = out / "source"
    src_cfg = TrainConfig(**{**fam["base"], "depth": 1, **fam["source"]})
    data = load_data(src_cfg)
    if not (src / "summary.json").is_file():
        train_run(src_cfg, src, progress=False, resume=True, data=data)
    run = load_run(src, data=data)
    rows = [row for arm in arms for row in run_arm(arm, fam, src, out, data, run)]
    if set(arms) != set(every):
        logging.info("arms %s cached in %s; run without --arms for the table", arms, out)
        return
    dense = model_row(run, run.dense, "source")
    meta = {"family": args.family, "command": f"python benchmarks/pretrained_path.py --family {args.family}",
            "pretrain_epochs": src_cfg.epochs, "epochs": fam["epochs"], "source_val": dense["val_acc"],
            "source_test": dense["test_acc"], "limit_train": src_cfg.limit_train, "threads": 1,
            "source_config": src_cfg.to_dict(),
            "note": "Fine-tune: Adam lr 1e-4, plain cross-entropy, training split. LoRITa: the source's recipe "
                    "(SGD momentum 0.9 cosine, decay on everything) with the recipe's depth, wd and lr, "
                    "--factor-side auto, --clip-grad-norm at the CLI default."}
    write(fam, rows, meta)


if __name__ == "__main__":
    main()

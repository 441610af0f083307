"""Short CIFAR-10 ResNet-20 check of the new training defaults (issue 10): not an accuracy result.

One epoch on the first ``--limit-train`` CIFAR-10 training images (validation: the CLI split's
5,000 held-out images), batch 128, SGD lr 0.05 momentum 0.9 cosine, wd 5e-4, one CPU thread, seed 0:
depth 1, depth 3 with the paper's start (``--init default --factor-side input --clip-grad-norm 0``,
the old defaults) and depth 3 with the new defaults (``balanced`` / ``auto`` / clip 2).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cifar_starts.py --data-dir ../shared/data/cifar-10-batches-bin

Writes benchmarks/results/cifar_starts.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from lorita.runs.config import TrainConfig
from lorita.runs.folder import load_data
from lorita.runs.train import train_run

RESULTS = Path(__file__).parent / "results"
VARIANTS = [
    ("depth 1 (plain)", dict(depth=1, init="default", factor_side="input", clip_grad_norm=0.0)),
    ("depth 3, paper start (old defaults)", dict(depth=3, init="default", factor_side="input", clip_grad_norm=0.0)),
    ("depth 3, new defaults (balanced/auto/clip 2)", dict(depth=3)),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", required=True)
    p.add_argument("--limit-train", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    base = dict(model="resnet20", dataset="cifar10", data_dir=args.data_dir, limit_train=args.limit_train,
                epochs=args.epochs, lr=0.05, weight_decay=5e-4, optimizer="sgd", momentum=0.9, batch_size=128)
    data = load_data(TrainConfig(**base))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, kw) in enumerate(VARIANTS):
            cfg = TrainConfig(**base, **kw)
            t0 = time.perf_counter()
            try:
                s = train_run(cfg, Path(tmp) / f"r{i}", progress=False, data=data)
                row = {"label": label, "diverged": False, "val_acc": s["val_acc"]}
            except FloatingPointError as exc:
                row = {"label": label, "diverged": True, "val_acc": None, "error": str(exc)}
            row.update(seconds=time.perf_counter() - t0, config={k: getattr(cfg, k) for k in
                       ("depth", "init", "init_scale", "factor_side", "clip_grad_norm")})
            rows.append(row)
            print(json.dumps(row), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cifar_starts.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    lines = [f"# CIFAR-10 ResNet-20 short check: {args.epochs} epoch(s) on {args.limit_train} images, seed 0", "",
             "| variant | val acc |", "|---|---|"]
    for r in rows:
        acc = "diverged" if r["diverged"] else f"{100 * r['val_acc']:.2f}%"
        lines.append(f"| {r['label']} | {acc} |")
    lines += ["", "SGD lr 0.05 momentum 0.9 cosine, wd 5e-4, batch 128, 1 thread; one seed and a short schedule: "
              "a smoke-level check of the defaults, not a front (no timing: runs were sequential on a shared "
              "machine; see lorita_starts.md for side-by-side step-time ratios)."]
    (RESULTS / "cifar_starts.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

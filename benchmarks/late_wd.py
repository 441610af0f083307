"""ResNet-20 recipe at another weight decay (issue 10): ``--depth 2 --factorize-at 5``, wd WD, 15 epochs
on the first 15,000 CIFAR-10 images, then the fronts' protocol (``MacBudget`` one-shot truncation and
the same 1-epoch Adam 1e-4 fine-tune). Compare with ``delayed_factorize.json`` (same subset, wd 2e-3).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/late_wd.py 0 0.004   # SEED WD; ~50 min on a shared thread

Writes ``benchmarks/results/late_wd<WD>_s<SEED>.json``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from fronts import FAMILIES, run_one

from lorita.finetune import FinetuneConfig
from lorita.io import atomic_write_text
from lorita.runs.config import TrainConfig
from lorita.runs.folder import load_data

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    seed, wd = int(sys.argv[1]), float(sys.argv[2])
    fam = FAMILIES["resnet20"]
    data = load_data(TrainConfig(**{**fam["cfg"], "limit_train": 15000}))
    cfg = TrainConfig(**{**fam["cfg"], "limit_train": 15000, "weight_decay": wd, "seed": seed, "depth": 2,
                         "epochs": 15, "factorize_at": 5})
    res = run_one(cfg, Path(f"benchmarks/runs/late_wd/late5_d2_wd{wd:g}_s{seed}"), [0.5, 0.3, 0.2],
                  FinetuneConfig(**fam["finetune"]), data)
    atomic_write_text(RESULTS / f"late_wd{wd:g}_s{seed}.json", json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""Factor starts, factor sides and gradient clipping for depth-N training (issue 10).

MNIST FCN (784-512-512-512-10), 2 epochs on 20,000 training images (``limit_train``; validation
is the CLI split's 5,000 held-out images), SGD lr 0.05 momentum 0.9 cosine, weight decay 1e-3
on everything (``decay="all"``), batch 128, one CPU thread — the ``lorita train`` path
(:func:`lorita.runs.train.train_run`) with only the start/side/clip knobs changed. Per variant and
seed: validation accuracy, whether it diverged (``FloatingPointError``), and each layer's rank at
99% energy of the merged weight after training (the low-rank bias: lower = more compressible).

Also the training-step cost ratio depth 3 / depth 1 at batch 128 for each factor side, timed
side by side in this process (median of interleaved rounds, one thread).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lorita_starts.py

Writes benchmarks/results/lorita_starts.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lorita import factorize, linalg, merge, param_groups, singular_values
from lorita.io import load
from lorita.models import build_model
from lorita.runs.config import TrainConfig
from lorita.runs.folder import load_data
from lorita.runs.train import train_run

RESULTS = Path(__file__).parent / "results"
BASE = dict(model="fcn", dataset="mnist", limit_train=20000, epochs=2, lr=0.05, weight_decay=1e-3,
            optimizer="sgd", momentum=0.9, scheduler="cosine", batch_size=128)
#: (label, depth, init, init_scale, factor_side, clip_grad_norm)
VARIANTS = [
    ("depth 1 (plain)", 1, "default", 1.0, "input", 0.0),
    ("default / input / no clip (paper, old CLI)", 3, "default", 1.0, "input", 0.0),
    ("default / input / clip 2", 3, "default", 1.0, "input", 2.0),
    ("balanced 1.0 / input / no clip", 3, "balanced", 1.0, "input", 0.0),
    ("balanced 1.0 / input / clip 2", 3, "balanced", 1.0, "input", 2.0),
    ("balanced 1.0 / auto / no clip", 3, "balanced", 1.0, "auto", 0.0),
    ("balanced 1.0 / auto / clip 2", 3, "balanced", 1.0, "auto", 2.0),
    ("balanced 0.5 / input / clip 2", 3, "balanced", 0.5, "input", 2.0),
    ("balanced 0.5 / auto / no clip", 3, "balanced", 0.5, "auto", 0.0),
    ("balanced 0.5 / auto / clip 2", 3, "balanced", 0.5, "auto", 2.0),
]


def ranks_at(model: torch.nn.Module, energy: float = 0.99) -> dict[str, int]:
    """Rank at ``energy`` of each merged weight (linalg.rank_for_energy on singular_values)."""
    return {k: linalg.rank_for_energy(s, energy) for k, s in singular_values(merge(model)).items()}


def run_one(cfg: TrainConfig, data, workdir: Path) -> dict:
    """Train ``cfg`` through the CLI's workflow; accuracy, divergence, ranks at 99% energy, seconds."""
    out = workdir / f"run-{len(list(workdir.iterdir())):04d}"  # (train_run re-seeds `random`)
    t0 = time.perf_counter()
    try:
        summary = train_run(cfg, out, progress=False, data=data)
    except FloatingPointError as exc:
        return {"diverged": True, "val_acc": None, "error": str(exc), "seconds": time.perf_counter() - t0}
    model = load(build_model("fcn"), out / "model.safetensors")
    try:
        ranks = ranks_at(model)
    except ValueError as exc:  # a non-finite merged weight: diverged without a non-finite loss
        return {"diverged": True, "val_acc": summary["val_acc"], "error": str(exc), "seconds": time.perf_counter() - t0}
    return {"diverged": False, "val_acc": summary["val_acc"], "ranks99": ranks,
            "rank99_sum": sum(ranks.values()), "seconds": time.perf_counter() - t0}


def step_ratios(rounds: int = 15, steps: int = 3, batch: int = 128) -> dict[str, float]:
    """Median training-step time of depth 3 (per factor side) over depth 1, interleaved rounds."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    variants = {"depth 1": build_model("fcn")}
    for side in ("input", "output", "auto"):
        variants[f"depth 3 {side}"] = factorize(build_model("fcn"), depth=3, init="balanced", factor_side=side)
    opts = {k: torch.optim.SGD(param_groups(m, 1e-3), lr=0.01, momentum=0.9) for k, m in variants.items()}

    def step(k: str) -> None:
        opts[k].zero_grad(set_to_none=True)
        F.cross_entropy(variants[k](x), y).backward()
        opts[k].step()

    times: dict[str, list[float]] = {k: [] for k in variants}
    for k in variants:
        for _ in range(3):
            step(k)
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(k)
            times[k].append((time.perf_counter() - t0) / steps)
    base = statistics.median(times["depth 1"])
    return {k: statistics.median(v) / base for k, v in times.items() if k != "depth 1"}


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for label, *_ in VARIANTS:
        rs = [r for r in rows if r["label"] == label]
        accs = [r["val_acc"] for r in rs if not r["diverged"]]
        ranks = [r["rank99_sum"] for r in rs if not r["diverged"]]
        out.append({"label": label, "runs": len(rs), "diverged": sum(r["diverged"] for r in rs),
                    "val_acc_mean": statistics.mean(accs) if accs else None,
                    "val_acc_min": min(accs) if accs else None, "val_acc_max": max(accs) if accs else None,
                    "rank99_sum_mean": statistics.mean(ranks) if ranks else None})
    return out


def write(rows: list[dict], ratios: dict, meta: dict, stem: str = "lorita_starts") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": summary, "step_ratio": ratios,
                                                       "runs": rows}, indent=1))
    lines = [f"# Factor starts, sides and clipping — MNIST FCN depth 3 ({meta['recipe']})", "",
             "| variant | runs | diverged | val acc mean (min–max) | Σ rank@99% energy (4 layers) |",
             "|---|---|---|---|---|"]
    for s in summary:
        acc = "—" if s["val_acc_mean"] is None else (
            f"{100 * s['val_acc_mean']:.2f}% ({100 * s['val_acc_min']:.2f}–{100 * s['val_acc_max']:.2f})")
        rk = "—" if s["rank99_sum_mean"] is None else f"{s['rank99_sum_mean']:.0f}"
        lines.append(f"| {s['label']} | {s['runs']} | {s['diverged']} | {acc} | {rk} |")
    if ratios:
        lines += ["", "Training step time, depth 3 / depth 1, batch 128, 1 thread (median of interleaved rounds):",
                  "", "| factor side | ratio |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    lines += ["", f"Seeds {meta['seeds']}; {meta['note']}"]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5))
        for s in summary:
            pts = [(r["rank99_sum"], 100 * r["val_acc"]) for r in rows
                   if r["label"] == s["label"] and not r["diverged"]]
            if pts:
                ax.scatter(*zip(*pts), label=s["label"], s=25)
        ax.set_xlabel("Σ rank at 99% energy after training (lower = more low-rank)")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title("MNIST FCN, 2 epochs / 20k images: start vs accuracy vs low-rank bias")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(RESULTS / f"{stem}.png", dpi=110)
    except ImportError:
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", type=int, nargs="*", default=None, help="variant indices")
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    data = load_data(TrainConfig(**BASE))
    rows = []
    picked = [VARIANTS[i] for i in args.only] if args.only is not None else VARIANTS
    with tempfile.TemporaryDirectory() as tmp:
        for label, depth, init, scale, side, clip in picked:
            for seed in args.seeds:
                cfg = TrainConfig(**BASE, depth=depth, init=init, init_scale=scale, factor_side=side,
                                  clip_grad_norm=clip, seed=seed)
                r = {"label": label, "seed": seed, **run_one(cfg, data, Path(tmp))}
                rows.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "ranks99"}), flush=True)
    ratios = step_ratios()
    meta = {"recipe": "2 epochs, 20k images, SGD lr 0.05 cosine, wd 1e-3, batch 128",
            "seeds": args.seeds, "threads": 1,
            "note": "20,000 training images (limit_train), validation = the CLI split's 5,000 held-out images; "
                    "ranks from lorita.singular_values of the merged model."}
    write(rows, ratios, meta)


if __name__ == "__main__":
    main()

"""Training-step cost of LoRITa depth 2/3 vs plain training (depth 1), on CPU.

For each model (at its usual batch size) this times full training steps — forward, cross-entropy,
backward, SGD with momentum and weight decay — of the depth-1, depth-2 and depth-3 models on the
same random batch. Variants are interleaved round by round (a fresh random order each round) so
that load from other processes hits all of them alike; each round runs ``--steps`` consecutive
steps per variant (default 1) after ``--warmup`` untimed ones.

Reported per model and depth: median step time (and quartiles) over all timed steps, the ratio
of medians to depth 1, the *paired* ratio (median over rounds of the per-round median ratio,
robust to load drifting between rounds), training MACs per step measured by
``torch.utils.flop_counter`` (forward + backward; FLOPs/2), and how many factorized layers ran
"chain" vs "merged" at that batch (``forward_mode="auto"``, chosen by MACs).

Targets (issue 5, depth 3 / depth 1): resnet20 ≤ 1.10, vit ≤ 1.15, fcn ≤ 2.0.

    .venv/bin/python benchmarks/train_overhead.py --out benchmarks/results/train_overhead.json

Writes the JSON, a PNG next to it, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lorita import factorize, param_groups
from lorita.layers import FactorizedConv2d, FactorizedLinear
from lorita.models import build_model, default_targets

TARGETS = {"resnet20": 1.10, "vit": 1.15, "fcn": 2.0}
INPUTS = {"fcn": (1, 28, 28), "resnet20": (3, 32, 32), "resnet18": (3, 32, 32), "vgg16": (3, 32, 32),
          "vit": (3, 32, 32)}


def build(name: str, depth: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name)
    if depth > 1:
        t, x = default_targets(name)
        model = factorize(model, depth=depth, target_modules=t, exclude_modules=x, inplace=True)
    return model.train()


def mode_census(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """How many factorized layers run "chain" / "merged" on this batch (auto mode, by MACs)."""
    counts = {"chain": 0, "merged": 0}
    handles = []

    def hook(mod, _inp, out):
        per = out.shape[1] if isinstance(mod, FactorizedConv2d) else mod.out_features
        rows = out.numel() // per
        counts[mod.mode_for(rows)] += 1

    for m in model.modules():
        if isinstance(m, FactorizedLinear | FactorizedConv2d):
            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return counts


def train_macs(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> int:
    """MACs of one training step's forward + backward (FlopCounterMode FLOPs / 2)."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    return counter.get_total_flops() // 2


def time_model(
    name: str, batch: int, depths: list[int], rounds: int, steps: int, warmup: int, seed: int
) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *INPUTS[name]), generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    variants = {}
    for d in depths:
        model = build(name, d, seed)
        opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.01, momentum=0.9)
        variants[d] = {"model": model, "opt": opt, "times": [], "round_medians": [],
                       "params": sum(p.numel() for p in model.parameters()),
                       "modes": mode_census(model, x), "train_macs": train_macs(model, opt, x, y)}

    def step(v):
        loss = F.cross_entropy(v["model"](x), y)
        v["opt"].zero_grad(set_to_none=True)
        loss.backward()
        v["opt"].step()

    for v in variants.values():
        for _ in range(warmup):
            step(v)
    order = list(depths)
    rng = random.Random(seed)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    for _ in range(rounds):
        rng.shuffle(order)
        for d in order:
            v = variants[d]
            ts = []
            for _ in range(steps):
                t0 = time.perf_counter()
                step(v)
                ts.append(time.perf_counter() - t0)
            v["times"] += ts
            v["round_medians"].append(statistics.median(ts))
    load_after = os.getloadavg()
    base = variants[depths[0]]
    out = {"model": name, "batch": batch, "input": list(INPUTS[name]), "rounds": rounds,
           "steps_per_round": steps,
           "warmup": warmup, "loadavg_before": load_before, "loadavg_after": load_after,
           "wall_seconds": time.perf_counter() - t_start, "target_depth3": TARGETS.get(name), "depths": {}}
    for d, v in variants.items():
        q = statistics.quantiles(v["times"], n=4)
        paired = [a / b for a, b in zip(v["round_medians"], base["round_medians"], strict=True)]
        out["depths"][str(d)] = {
            "median_s": statistics.median(v["times"]), "p25_s": q[0], "p75_s": q[2],
            "ratio_of_medians": statistics.median(v["times"]) / statistics.median(base["times"]),
            "paired_ratio": statistics.median(paired), "paired_ratio_min": min(paired),
            "paired_ratio_max": max(paired), "params": v["params"], "train_macs_per_step": v["train_macs"],
            "macs_ratio": v["train_macs"] / base["train_macs"], "factorized_layer_modes": v["modes"],
        }
    return out


def conditions(threads: int) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "python": platform.python_version(), "cpu": cpu, "cpu_count": os.cpu_count(), "threads": threads,
            "note": "2-core machine shared with other jobs; variants interleaved per round, medians reported"}


def table(results: list[dict]) -> str:
    lines = ["| model | batch | depth | median step (s) | ratio (paired) | ratio of medians | "
             "train MACs ratio | "
             "layers chain/merged | target |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for d, v in r["depths"].items():
            tgt = f"≤ {r['target_depth3']:.2f}" if (d == "3" and r["target_depth3"]) else ""
            m = v["factorized_layer_modes"]
            lines.append(
                f"| {r['model']} | {r['batch']} | {d} | {v['median_s']:.4f} | {v['paired_ratio']:.3f} | "
                f"{v['ratio_of_medians']:.3f} | {v['macs_ratio']:.3f} | {m['chain']}/{m['merged']} | {tgt} |"
            )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    labels = [f"{r['model']}\nbatch {r['batch']}" for r in results]
    depths = sorted({d for r in results for d in r["depths"]}, key=int)[1:]
    w = 0.8 / max(1, len(depths))
    for k, d in enumerate(depths):
        vals = [r["depths"].get(d, {}).get("paired_ratio", float("nan")) for r in results]
        xs = [i + (k - (len(depths) - 1) / 2) * w for i in range(len(results))]
        ax.bar(xs, vals, w, label=f"depth {d}")
    for i, r in enumerate(results):
        if r["target_depth3"]:
            ax.hlines(r["target_depth3"], i - 0.45, i + 0.45, colors="k", linestyles="--", lw=1)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(results)), labels, fontsize=8)
    ax.set_ylabel("step time / depth-1 step time")
    ax.set_title("LoRITa training overhead on CPU (dashed: depth-3 target)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+",
                   default=["fcn@128", "fcn@2048", "resnet20@128", "vit@128", "vgg16@128"],
                   help="model@batch entries (default: the usual batch 128, plus fcn at 2048 for contrast)")
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--rounds", type=int, default=None, help="rounds per model (default: per-model)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/train_overhead.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # (rounds, steps per round): one step per variant per round keeps the pairing tight under
    # drifting load; cheap models get many rounds, the 200-300 M-MAC ones fewer.
    plan = {"fcn": (120, 1), "resnet20": (40, 1), "resnet18": (12, 1), "vit": (15, 1), "vgg16": (12, 1)}
    results = []
    for spec in args.models:
        name, _, b = spec.partition("@")
        rounds, steps = plan.get(name, (10, 1)) if int(b or 128) <= 512 else (25, 1)
        r = time_model(name, int(b or 128), args.depths, args.rounds or rounds, args.steps or steps,
                       args.warmup, args.seed)
        results.append(r)
        print(table([r]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/train_overhead.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if v is not None)
    out.write_text(json.dumps({"command": cmd, "conditions": conditions(args.threads), "results": results},
                              indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    md = table(results)
    out.with_suffix(".md").write_text(f"# Training overhead (CPU)\n\nCommand: `{cmd}`\n\n{md}\n")
    print(md)


if __name__ == "__main__":
    main()

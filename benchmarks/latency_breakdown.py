"""Where the time goes: MAC-bearing ops vs everything else, dense vs low-rank (issue 9 target 2).

``benchmarks/latency.py`` measures whole-model latency ratios; their realized fraction
(latency ratio / MAC ratio) falls as the MAC budget shrinks. This script explains that gap with
``torch.profiler`` (the kept tool for per-op CPU time): for each model, MAC budget and batch it
profiles the dense model and its low-rank model (``to_low_rank(model, MacBudget ranks)``, split
wherever ``r·(m+n) < m·n``), eager NCHW, one thread, and splits each forward pass's CPU time into

* **MAC ops**: convolutions and matrix products (``conv``/``mm``/``addmm``/``bmm``/``linear``/
  attention kernels) — the time MACs predict, and
* **other ops**: BatchNorm, ReLU/GELU, pooling, softmax, LayerNorm, adds, copies and reshapes —
  time that does not shrink with the MAC count.

From those it reports the realized fraction *inside* the MAC ops (their time ratio / MAC ratio:
kernel efficiency of thin layers) and the Amdahl bound ``1 / (f + (1 - f) / MAC ratio)`` on the
whole-model latency ratio, where ``f`` is the dense model's share of time in other ops (the best
any split could do if the MAC ops scaled perfectly and the other ops stayed as they are).

Per-op times come from the profiler (self CPU time, several profiled forward passes after a
warm-up); dense and low-rank are profiled in alternating rounds and the median per-round sum is
kept. Ratios only: a shared machine, no absolute time is a claim.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latency_breakdown.py --out benchmarks/results/latency_breakdown
    .venv/bin/python benchmarks/latency_breakdown.py --models fcn --budgets 0.3 --rounds 1 --out /tmp/b  # quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import lorita
from lorita.io import atomic_path, atomic_write_text
from lorita.models import DEFAULT_CFGS, build_model, default_targets

log = logging.getLogger("bench.latency_breakdown")

#: aten ops whose self time is the MAC work (leaf kernels and the wrappers that own it).
MAC_OPS = re.compile(r"conv|mkldnn_convolution|(^|::)(mm|addmm|bmm|baddbmm|matmul|linear)$|"
                     r"scaled_dot_product|_flash_attention|_efficient_attention|mkldnn_rnn|addmv")


def split_times(model: torch.nn.Module, x: torch.Tensor, iters: int) -> dict[str, float]:
    """Self CPU seconds per forward pass, summed over MAC ops and over the other ops.

    Args:
        model: an eval-mode module. x: its input (batch included).
        iters: profiled forward passes (after two un-profiled warm-up passes).

    Returns:
        ``{"mac": s, "other": s, "ops": {name: s}}`` per forward pass.
    """
    with torch.no_grad():
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                model(x)
    ops: dict[str, float] = {}
    for ev in prof.key_averages():
        t = ev.self_cpu_time_total / 1e6 / iters
        if t > 0:
            ops[ev.key] = ops.get(ev.key, 0.0) + t
    mac = sum(t for k, t in ops.items() if MAC_OPS.search(k))
    return {"mac": mac, "other": sum(ops.values()) - mac, "ops": ops}


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name).eval()
        targets, exclude = default_targets(name)
        shape = DEFAULT_CFGS[name]["input_shape"]
        x1 = torch.zeros(1, *shape)
        dense_macs = lorita.count_macs(model, x1).total_macs
        for budget in args.budgets:
            ranks = lorita.select_ranks(model, lorita.MacBudget(budget, x1), targets, exclude)
            low = lorita.to_low_rank(model, ranks).eval()
            dense = model
            if args.fold_bn:
                dense, low = lorita.fold_batchnorm(model), lorita.fold_batchnorm(low)
            low_macs = lorita.count_macs(low, x1).total_macs
            for batch in args.batches:
                t0 = time.perf_counter()
                x = torch.randn(batch, *shape)
                per = {"dense": [], "low": []}
                for r in range(args.rounds):
                    order = ("dense", "low") if r % 2 == 0 else ("low", "dense")
                    for k in order:
                        per[k].append(split_times(dense if k == "dense" else low, x, args.iters))
                med = {k: {p: statistics.median(s[p] for s in v) for p in ("mac", "other")} for k, v in per.items()}
                d, lw = med["dense"], med["low"]
                d_tot, l_tot = d["mac"] + d["other"], lw["mac"] + lw["other"]
                mac_ratio = dense_macs / low_macs
                f = d["other"] / d_tot
                bound = 1.0 / (f + (1 - f) / mac_ratio)
                top = sorted(per["low"][0]["ops"].items(), key=lambda kv: -kv[1])[:6]
                rows.append({
                    "model": name, "budget": budget, "batch": batch, "mac_ratio": round(mac_ratio, 3),
                    "latency_ratio": round(d_tot / l_tot, 3), "realized": round(d_tot / l_tot / mac_ratio, 3),
                    "mac_op_ratio": round(d["mac"] / lw["mac"], 3),
                    "mac_op_realized": round(d["mac"] / lw["mac"] / mac_ratio, 3),
                    "other_share_dense": round(f, 3), "other_share_low": round(lw["other"] / l_tot, 3),
                    "other_ratio": round(d["other"] / lw["other"], 3),
                    "amdahl_bound": round(bound, 3), "amdahl_realized": round(bound / mac_ratio, 3),
                    "top_ops_low": [[k, round(t / l_tot, 3)] for k, t in top],
                })
                log.info("%s %.2f batch %d: latency %.2fx of %.2fx MACs; MAC ops %.2fx; other %.0f%% of dense; "
                         "bound %.2fx (%.0fs)", name, budget, batch, d_tot / l_tot, mac_ratio, d["mac"] / lw["mac"],
                         100 * f, bound, time.perf_counter() - t0)
    return rows


def write(rows: list[dict], args: argparse.Namespace, seconds: float) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "rounds": args.rounds, "iters": args.iters,
            "seconds": round(seconds), "args": vars(args)}
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "# Where the time goes: MAC ops vs other ops (eager NCHW, split=\"macs\""
        + (", BatchNorm folded" if args.fold_bn else "") + ")", "",
        f"`torch.profiler` self CPU time per forward pass, {args.threads} thread, {args.iters} profiled passes "
        f"per round, {args.rounds} alternating rounds (median), random weights, ranks from `MacBudget`; "
        f"torch {torch.__version__}. Ratios only (shared machine; whole run {seconds / 60:.0f} min).", "",
        "MAC ops: convolutions and matrix products. Other ops: BatchNorm, activations, pooling, softmax, "
        "LayerNorm, adds, copies. *MAC-op realized* = MAC-op time ratio / MAC ratio (kernel efficiency of the "
        "thin layers). *other share*: fraction of the dense model's time in other ops (f). *Amdahl bound* = "
        "1 / (f + (1 - f) / MAC ratio): the best whole-model latency ratio if the MAC ops scaled perfectly "
        "and the other ops stayed; *bound realized* = bound / MAC ratio, the ceiling on the realized fraction "
        "on this runtime.", "",
        "| model | MAC budget | batch | MAC ratio | latency ratio | realized | MAC-op ratio | MAC-op realized "
        "| other share (dense → low-rank) | Amdahl bound | bound realized |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['budget']} | {r['batch']} | {r['mac_ratio']:.2f} | {r['latency_ratio']:.2f} | "
            f"{r['realized']:.2f} | {r['mac_op_ratio']:.2f} | {r['mac_op_realized']:.2f} | "
            f"{r['other_share_dense']:.0%} → {r['other_share_low']:.0%} | {r['amdahl_bound']:.2f} | "
            f"{r['amdahl_realized']:.2f} |")
    lines += ["", "Largest ops in each low-rank model (share of its time):", ""]
    for r in rows:
        ops = ", ".join(f"`{k}` {v:.0%}" for k, v in r["top_ops_low"])
        lines.append(f"- {r['model']} {r['budget']} batch {r['batch']}: {ops}")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    plot(rows, out.with_suffix(".png"), "BatchNorm folded" if args.fold_bn else "BatchNorm as trained")


def plot(rows: list[dict], path: Path, note: str) -> None:
    """Per model and budget: measured realized fraction, MAC-op realized and the Amdahl ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n{r['budget']}" for r in rows]
    xs = range(len(rows))
    w = 0.27
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(rows) + 2), 4))
    ax.bar([x - w for x in xs], [r["realized"] for r in rows], w, label="realized (whole model)")
    ax.bar(list(xs), [r["mac_op_realized"] for r in rows], w, label="realized inside MAC ops")
    ax.bar([x + w for x in xs], [r["amdahl_realized"] for r in rows], w, label="Amdahl ceiling (other ops fixed)")
    ax.axhline(0.7, color="k", lw=0.8, ls="--", label="issue 9 target 0.7")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("latency ratio / MAC ratio")
    ax.set_title(f"Where the time goes, eager NCHW, 1 thread, batch {rows[0]['batch']} ({note})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["fcn", "resnet20", "resnet18", "vgg16", "vit"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3, 0.2])
    p.add_argument("--batches", nargs="+", type=int, default=[64])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the convs first (lorita.fold_batchnorm)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    rows = run(args)
    write(rows, args, time.perf_counter() - t0)


if __name__ == "__main__":
    main()

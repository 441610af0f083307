"""Measured latency of lorita's deployable models: split="macs" vs split="latency" (issue 9).

For each reference model (random weights: latency does not depend on the values), three MAC
budgets (ranks from lorita's own ``MacBudget`` on the model's default targets), two batch sizes
and three runtimes (eager NCHW, eager channels_last for CNNs, ONNX Runtime fp32), it builds

* ``macs``: ``to_low_rank(model, ranks)`` (split where ``r·(m+n) < m·n``), and
* ``latency``: ``to_low_rank(model, ranks, split="latency", example_inputs=x, runtime=rt)``
  (split only where the pair measured faster than the dense layer, on this runtime/format/batch),

then times ``dense``, ``macs`` and ``latency`` interleaved in rounds in one process with one
thread (:func:`lorita.compare_latency`) and reports ratios only: MAC ratio (dense/model MACs),
latency ratio (dense/model time, median of per-round ratios), realized fraction
(latency ratio / MAC ratio) and fp32 weight bytes. For resnet20 at ~1/3 of the MACs it also
writes a per-layer table of bytes moved vs MACs (the memory-traffic bound of thin convs).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latency.py --out benchmarks/results/latency
    .venv/bin/python benchmarks/latency.py --models fcn --budgets 0.3 --rounds 2   # quick look
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latency.py --models fcn vit --replace  # rerun two models in place

Writes ``<out>.json``, ``<out>.md`` and ``<out>.png``. ``--fold-bn`` folds BatchNorm into the
convs of all three models first (needs ``lorita.fold_batchnorm``, issue 9 item 3).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import torch

import lorita
from lorita.io import atomic_path, atomic_write_text
from lorita.models import DEFAULT_CFGS, build_model, default_targets
from lorita.timing import BenchmarkTimer

CNNS = {"resnet20", "resnet18", "vgg16"}
BIG = {"resnet18", "vgg16"}  # large batch --big-batch (default 16) to keep the default run short
log = logging.getLogger("bench.latency")


def _bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _settings(name: str, batch: int, big_batch: int) -> list[tuple[str, str, int]]:
    batches = (1, big_batch if name in BIG else batch)
    fmts = [("eager", "nchw"), ("eager", "channels_last"), ("onnxruntime", "nchw")]
    if name not in CNNS:
        fmts = [f for f in fmts if f[1] == "nchw"]
    return [(rt, fmt, b) for b in batches for rt, fmt in fmts]


def _conv_traffic(model, ranks, decisions, x) -> list[dict]:
    """Per targeted conv: MACs and fp32 bytes moved (read input + weights, write output; a split
    also writes and reads its r-channel middle) dense vs split, and the measured layer ratio."""
    shapes: dict[str, tuple] = {}

    def hook(name):
        def fn(mod, args, out):
            shapes.setdefault(name, (args[0].shape, out.shape))
        return fn

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n in ranks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    rows = []
    for name, r in ranks.items():
        mod = model.get_submodule(name)
        if not isinstance(mod, torch.nn.Conv2d):
            continue
        (xin, xout), w = shapes[name], mod.weight
        m, n = w.shape[0], w[0].numel()
        pos, a_in, a_out = xout[2] * xout[3], xin[1:].numel(), xout[1:].numel()
        mid = r * pos
        dense_b = 4 * (a_in + a_out + m * n)
        split_b = 4 * (a_in + 2 * mid + a_out + r * n + m * r)
        d = decisions[name]
        rows.append({
            "layer": name, "shape": f"{m}x{n}", "rank": r, "mac_ratio": round(m * n / (r * (m + n)), 3),
            "bytes_ratio": round(dense_b / split_b, 3),
            "macs_per_byte_dense": round(m * n * pos / dense_b, 2),
            "macs_per_byte_split": round(r * (m + n) * pos / split_b, 2),
            "latency_ratio": None if d.latency_ratio is None else round(d.latency_ratio, 3), "split": d.split,
        })
    return rows


def run_model(name: str, args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    torch.manual_seed(0)
    model = build_model(name).eval()
    targets, exclude = default_targets(name)
    shape = DEFAULT_CFGS[name]["input_shape"]
    dense_macs = lorita.count_macs(model, torch.zeros(1, *shape)).total_macs
    layer_timer = BenchmarkTimer(min_run_time=args.layer_time, warmup=1, best=True)
    model_timer = BenchmarkTimer(min_run_time=args.model_time, warmup=1, best=True)
    rows, traffic = [], []
    for budget in args.budgets:
        ranks = lorita.select_ranks(model, lorita.MacBudget(budget, torch.zeros(1, *shape)), targets, exclude,
                                    multiple=args.rank_multiple)
        by_macs = lorita.to_low_rank(model, ranks)
        for runtime, fmt, batch in _settings(name, args.batch, args.big_batch):
            t0 = time.perf_counter()
            x = torch.randn(batch, *shape)
            if fmt == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            by_lat, dec = lorita.to_low_rank(model, ranks, split="latency", example_inputs=x, runtime=runtime,
                                             timer=layer_timer, report=True, multiple=args.multiple)
            # "control" (eager): a second copy of dense; its ratio shows the noise floor of this setting
            models = {"dense": model, "macs": by_macs, "latency": by_lat}
            if runtime == "eager":
                models["control"] = copy.deepcopy(model)
            if args.fold_bn:
                models = {k: lorita.fold_batchnorm(v) for k, v in models.items()}
            cmp = lorita.compare_latency(models, x, runtime=runtime, rounds=args.rounds, timer=model_timer)
            for split in ("macs", "latency"):
                macs = lorita.count_macs(models[split], x[:1]).total_macs
                mac_ratio = dense_macs / macs
                lat = cmp.speedup[split]
                rows.append({
                    "model": name, "budget": budget, "batch": batch, "runtime": runtime, "format": fmt,
                    "split": split, "mac_ratio": round(mac_ratio, 3), "latency_ratio": round(lat, 3),
                    "realized": round(lat / mac_ratio, 3), "bytes": _bytes(models[split]),
                    "dense_bytes": _bytes(model),
                    "splits": sum(d.split for d in dec.values()) if split == "latency" else None,
                    "layers": len(dec),
                    "rounds": [round(cmp.rounds["dense"][i] / t, 3) for i, t in enumerate(cmp.rounds[split])],
                    "control": round(cmp.speedup["control"], 3) if "control" in cmp.speedup else None,
                })
            if name == "resnet20" and abs(budget - 0.3) < 1e-9 and runtime == "eager" and batch > 1:
                traffic.append({"format": fmt, "batch": batch, "rows": _conv_traffic(model, ranks, dec, x)})
            log.info("%s budget %.2f %s/%s batch %d: macs %.2fx latency %.2fx (%d/%d split) in %.0fs",
                         name, budget, runtime, fmt, batch, cmp.speedup["macs"], cmp.speedup["latency"],
                         sum(d.split for d in dec.values()), len(dec), time.perf_counter() - t0)
    return rows, traffic


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _batches(rows: list[dict]) -> str:
    by_model: dict[str, set] = {}
    for r in rows:
        by_model.setdefault(r["model"], set()).add(r["batch"])
    return ", ".join(f"{m} {'/'.join(map(str, sorted(b)))}" for m, b in by_model.items())


def _multiple_note(k: int) -> str:
    return "" if k == 1 else f" in multiples of {k} (`select_ranks(..., multiple={k})`)"


def _markdown(rows: list[dict], traffic: list[dict], args: argparse.Namespace, seconds: float,
              notes: list[str] = ()) -> str:
    out = [
        "# Latency: split=\"macs\" vs split=\"latency\"", "",
        f"Ratios vs the dense model, measured side by side in one process (interleaved rounds: {args.rounds}; "
        f"median of per-round ratios), 1 thread, random weights, ranks from `MacBudget` on the default targets"
        f"{_multiple_note(args.rank_multiple)}. "
        f"torch {torch.__version__}. Shared, noisy machine: read ratios, never absolute times "
        f"(whole run {seconds / 60:.0f} min). Batch sizes: {_batches(rows)}.", "",
        *[f"Note: {n}\n" for n in notes],
        "latency ratio > 1: faster than dense. realized = latency ratio / MAC ratio. bytes: fp32 weights.", "",
        "control: a second copy of the dense model timed in the same rounds (its ratio should be 1.00; the gap "
        "is this setting's noise). Per round each model's fastest block (`BenchmarkTimer(best=True)`).", "",
        "| model | MAC budget | batch | runtime | format | split | MAC ratio | latency ratio | realized | "
        "control | bytes (dense) | split layers |",
        "|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        splits = f"{r['splits']}/{r['layers']}" if r["splits"] is not None else f"-/{r['layers']}"
        out.append(
            f"| {r['model']} | {r['budget']:g} | {r['batch']} | {r['runtime']} | {r['format']} | {r['split']} | "
            f"{r['mac_ratio']:.2f} | {r['latency_ratio']:.2f} | {r['realized']:.2f} | {_num(r['control'])} | "
            f"{r['bytes']:,} ({r['dense_bytes']:,}) | {splits} |"
        )
    for t in traffic:
        out += [
            "", f"## resnet20 at MAC budget 0.3, eager {t['format']}, batch {t['batch']}: bytes moved vs MACs "
            f"per conv", "",
            "fp32 bytes read+written (input, weights, output; a split adds its r-channel middle, written then "
            "read). A layer whose MACs/byte is low is bound by memory traffic, so its latency ratio tracks the "
            "bytes ratio, not the MAC ratio.", "",
            "| layer | m x n | rank | MAC ratio | bytes ratio | MACs/byte dense | MACs/byte split | "
            "measured layer latency ratio | split kept |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in t["rows"]:
            lat = "-" if r["latency_ratio"] is None else f"{r['latency_ratio']:.2f}"
            out.append(f"| {r['layer']} | {r['shape']} | {r['rank']} | {r['mac_ratio']:.2f} | {r['bytes_ratio']:.2f} | "
                       f"{r['macs_per_byte_dense']:.1f} | {r['macs_per_byte_split']:.1f} | {lat} | {r['split']} |")
    return "\n".join(out) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for split, marker in (("macs", "o"), ("latency", "^")):
        sel = [r for r in rows if r["split"] == split]
        ax.scatter([r["mac_ratio"] for r in sel], [r["latency_ratio"] for r in sel], marker=marker,
                   label=f'split="{split}"', alpha=0.7)
    hi = max([r["mac_ratio"] for r in rows] + [2.0])
    ax.plot([1, hi], [1, hi], "k:", lw=1, label="realized = 1")
    ax.axhline(1.0, color="r", lw=1, label="dense speed")
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xticks([1, 1.5, 2, 3, 4, 5])
    ax.set_yticks([0.7, 1, 1.5, 2, 3, 4])
    ax.set_xlabel("MAC ratio (dense / low-rank)")
    ax.set_ylabel("measured latency ratio (dense / low-rank)")
    ax.set_title("lorita: measured speed-up vs MAC reduction (1 thread)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _merged(old: dict, rows: list[dict], traffic: list[dict], models: list[str]) -> tuple[list, list, int]:
    """``--replace``: the rerun ``models``' rows in place of theirs in ``old`` (a previous result),
    in ``old``'s model order; ``old``'s seconds are added to the total."""
    order = list(dict.fromkeys(old["meta"]["args"]["models"] + models))
    merged = [r for m in order for r in (rows if m in models else old["rows"]) if r["model"] == m]
    kept = traffic if "resnet20" in models else old.get("traffic", [])
    return merged, kept, old["meta"]["seconds"]


def _old_notes(meta: dict) -> list[str]:
    """The notes of a previous result (``rerun`` was the key of the first one)."""
    return list(meta.get("notes", [])) + ([meta["rerun"]] if "rerun" in meta else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "fcn", "vit", "vgg16", "resnet18"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3, 0.2])
    p.add_argument("--batch", type=int, default=64, help="the large batch (resnet18/vgg16: --big-batch)")
    p.add_argument("--big-batch", type=int, default=16, help="the large batch for resnet18/vgg16")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--layer-time", type=float, default=0.02, help="min_run_time per layer measurement (s)")
    p.add_argument("--model-time", type=float, default=0.02, help="min_run_time per model measurement (s)")
    p.add_argument("--multiple", type=int, default=None, help="also try ranks rounded up to this multiple")
    p.add_argument("--rank-multiple", type=int, default=1,
                   help="MacBudget's rank granularity (select_ranks(..., multiple=)); 8: channel blocks on AVX2")
    p.add_argument("--fold-bn", action="store_true", help="fold BatchNorm first (lorita.fold_batchnorm)")
    p.add_argument("--out", default="benchmarks/results/latency")
    p.add_argument("--note", default=None, help="a sentence kept in the result's meta and Markdown")
    p.add_argument("--replace", action="store_true",
                   help="rerun only --models and keep the other models' rows of the existing <out>.json")
    args = p.parse_args()
    old = json.loads(Path(args.out).with_suffix(".json").read_text()) if args.replace else None
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows, traffic = [], []
    for name in args.models:
        try:
            r, t = run_model(name, args)
        except Exception:  # keep what the other models measured; the log has the traceback
            log.exception("%s failed", name)
            continue
        rows += r
        traffic += t
        out = Path(args.out)  # rewrite after every model: a cut-off run keeps what it measured
        out.parent.mkdir(parents=True, exist_ok=True)
        seconds = time.perf_counter() - t0
        all_rows, all_traffic, before = (rows, traffic, 0) if old is None else _merged(old, rows, traffic, args.models)
        seconds += before
        notes = ([] if old is None else _old_notes(old["meta"])) + ([args.note] if args.note else [])
        meta = {"torch": torch.__version__, "threads": 1, "rounds": args.rounds, "seconds": round(seconds),
                "args": vars(args) if old is None else {**old["meta"]["args"], "replaced": args.models},
                "notes": notes}
        atomic_write_text(out.with_suffix(".json"),
                          json.dumps({"meta": meta, "rows": all_rows, "traffic": all_traffic}, indent=1))
        atomic_write_text(out.with_suffix(".md"), _markdown(all_rows, all_traffic, args, seconds, notes))
        _plot(all_rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()

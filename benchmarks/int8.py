"""Static int8 (onnxruntime QDQ) vs fp32 ONNX: bytes on disk, accuracy, latency ratio (issue 9 item 4).

For each model (a trained ``lorita train`` folder, or a reference model with random weights for
bytes and speed only) and each variant — dense, and low-rank at ``RankRatio(0.3)`` via
``to_low_rank`` — the BatchNorm-folded fp32 export is compared with its static int8 export
(``lorita.export.export_int8``: per-channel int8 weights, activations calibrated on 512
*training* images; never test images):

* bytes on disk of both ``.onnx`` files (target: int8 ≤ 35% of fp32);
* top-1 accuracy of both under onnxruntime on the first ``--val-samples`` validation images, and
  their top-1 agreement (target: ≤ 1.5 points lost, trained models only);
* latency ratio fp32/int8 (> 1: int8 faster) at batch 1 and 64, one intra-op thread, onnxruntime
  CPU, both sessions timed in interleaved rounds in one process (median of rounds). These are
  ratios on a shared, noisy machine; no absolute time is claimed.

Three int8 settings are measured on the first model, to justify the default (see ``SETTINGS``).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8.py --run resnet20=RUN_DIR [--run fcn=RUN_DIR] \
        [--random vgg16] --results benchmarks/results/int8

Writes ``<results>.json``, ``<results>.md`` and ``<results>.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lorita
from lorita.data import load_dataset
from lorita.export import export_int8, export_onnx
from lorita.export_int8 import onnx_session, strip_debug_metadata
from lorita.io import atomic_write_text
from lorita.models import build_model
from lorita.runs.folder import load_run

RATIO = 0.3


def interleaved_medians(sessions: dict, x: np.ndarray, rounds: int, block_s: float) -> dict[str, dict[str, float]]:
    """Median and IQR (seconds per run) of each session on ``x``, timed in interleaved rounds
    (order reversed every other round); each round times a block of ~``block_s`` seconds."""
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    reps = {}
    for k, s in sessions.items():
        for _ in range(2):
            s.run(None, feeds[k])
        t0 = time.perf_counter()
        s.run(None, feeds[k])
        reps[k] = max(1, int(block_s / max(time.perf_counter() - t0, 1e-6)))
    times: dict[str, list[float]] = {k: [] for k in sessions}
    keys = list(sessions)
    for r in range(rounds):
        for k in keys if r % 2 == 0 else keys[::-1]:
            t0 = time.perf_counter()
            for _ in range(reps[k]):
                sessions[k].run(None, feeds[k])
            times[k].append((time.perf_counter() - t0) / reps[k])
    out = {}
    for k, v in times.items():
        q = statistics.quantiles(v, n=4) if len(v) >= 2 else [v[0]] * 3
        out[k] = {"median_s": statistics.median(v), "iqr_s": q[2] - q[0], "rounds": len(v)}
    return out


def _ratio(lat: dict, act: str) -> float:
    return lat["fp32"]["median_s"] / lat[act]["median_s"]


def _predict(path: Path, x: torch.Tensor, batch: int = 250) -> np.ndarray:
    s = onnx_session(path)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + batch].numpy()})[0].argmax(1) for i in range(0, len(x), batch)])


def _sources(args: argparse.Namespace) -> list[dict]:
    out = []
    for spec in args.run:
        name, _, folder = spec.partition("=")
        run = load_run(folder)
        summary = json.loads((Path(folder) / "summary.json").read_text())
        out.append({"name": name, "trained": True, "model": run.dense, "data": run.data,
                    "info": {"run": folder, "epochs": run.cfg.epochs, "limit_train": run.cfg.limit_train,
                             "depth": run.cfg.depth, "run_val_acc": summary.get("val_acc")}})
    for name in args.random:
        data = load_dataset("cifar10", args.cifar_dir, val_size=5000, verify=False)
        torch.manual_seed(0)
        out.append({"name": name, "trained": False, "model": build_model(name).eval(), "data": data,
                    "info": {"weights": "random (seed 0)"}})
    return out


#: int8 settings compared on the first model: the default (uint8 activations, 7-bit weights), full
#: 8-bit weights, int8 activations. Later models get the default only.
SETTINGS = {
    "u8 act, 7-bit w (default)": {"activations": "quint8", "reduce_range": True},
    "u8 act, 8-bit w": {"activations": "quint8", "reduce_range": False},
    "s8 act, 8-bit w": {"activations": "qint8", "reduce_range": False},
}
DEFAULT = "u8 act, 7-bit w (default)"


def measure(src: dict, activations: list[str], args: argparse.Namespace, tmp: Path) -> list[dict]:
    data, dense = src["data"], src["model"].eval()
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(data.train_x), generator=g)[: args.calibration_samples]
    calib = data.normalize(data.train_x[pick])
    vx, vy = data.normalize(data.val_x[: args.val_samples]), data.val_y[: args.val_samples].numpy()
    ex = calib[:2]
    ranks = lorita.select_ranks(dense, lorita.RankRatio(RATIO))
    variants = {"dense": dense, f"low-rank ratio {RATIO}": lorita.to_low_rank(dense, ranks)}
    rows = []
    for vname, model in variants.items():
        tag = f"{src['name']}-{vname.split()[0]}"
        fp32 = tmp / f"{tag}.fp32.onnx"
        export_onnx(lorita.fold_batchnorm(model), ex, fp32)
        strip_debug_metadata(fp32)  # as the int8 file: bytes compare weights + graph, not debug text
        files = {"fp32": fp32}
        reports = {}
        for act in activations:
            t0 = time.perf_counter()
            reports[act] = export_int8(model, ex, tmp / f"{tag}.{len(files)}.onnx", calib, **SETTINGS[act])
            reports[act] = (reports[act], time.perf_counter() - t0)
            files[act] = reports[act][0].path
        preds = {k: _predict(p, vx) for k, p in files.items()}
        macs = lorita.count_macs(model, ex[:1]).total_macs
        row = {"model": src["name"], "variant": vname, "trained": src["trained"], "macs": macs,
               "fp32_bytes": fp32.stat().st_size, "fp32_val_acc": float((preds["fp32"] == vy).mean()), "int8": {}}
        for b in args.batches:
            sessions = {k: onnx_session(p, threads=1) for k, p in files.items()}
            lat = interleaved_medians(sessions, vx[:b].numpy(), args.rounds, args.block_s if b == 1 else 0.0)
            row[f"latency_b{b}"] = lat
        for act in activations:
            rep, secs = reports[act]
            row["int8"][act] = {
                "bytes": rep.int8_bytes, "size_ratio": rep.int8_bytes / row["fp32_bytes"],
                "val_acc": float((preds[act] == vy).mean()), "agreement": float((preds[act] == preds["fp32"]).mean()),
                "points_lost": 100 * (row["fp32_val_acc"] - float((preds[act] == vy).mean())),
                "export_seconds": secs,
                **{f"latency_ratio_b{b}": _ratio(row[f"latency_b{b}"], act) for b in args.batches},
            }
        logging.info("%s %s: %s", src["name"], vname, json.dumps(row["int8"]))
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    b1, b2 = result["batches"]
    lines = [
        "# Static int8 (onnxruntime QDQ) vs fp32 ONNX", "",
        f"Command: `{result['command']}`", "",
        "Per model and variant: the BatchNorm-folded fp32 export vs `lorita.export.export_int8` (both files made "
        "compact the same way: no exporter debug metadata, short internal names; QDQ, per-channel int8 weights "
        "of the range in the setting column, "
        f"activations calibrated (min/max) on {result['calibration_samples']} training images). "
        f"Accuracy: onnxruntime top-1 on the first {result['val_samples']} validation images (never test images; "
        "calibration images are training images). Latency ratio = fp32 median / int8 median (> 1: int8 faster), "
        f"onnxruntime {result['onnxruntime']} CPU, 1 intra-op thread, {result['rounds']} interleaved rounds in one "
        "process on a shared 2-core machine (ratios only, no absolute times). Low-rank: `to_low_rank` at "
        f"`RankRatio({RATIO})`, no fine-tuning (its own accuracy drop vs dense is not the int8 loss).", "",
        "| model | variant | int8 setting | fp32 bytes | int8 bytes | int8/fp32 | fp32 val % | int8 val % "
        f"| lost (pts) | agreement % | latency ratio b{b1} | latency ratio b{b2} |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        for act, q in r["int8"].items():
            acc = (f"{100 * r['fp32_val_acc']:.2f} | {100 * q['val_acc']:.2f} | {q['points_lost']:+.2f}"
                   if r["trained"] else "(untrained) | (untrained) | –")
            lines.append(
                f"| {r['model']} | {r['variant']} | {act} | {r['fp32_bytes']:,} | {q['bytes']:,} | "
                f"{100 * q['size_ratio']:.1f}% | {acc} | {100 * q['agreement']:.1f} | "
                f"{q[f'latency_ratio_b{b1}']:.2f} | {q[f'latency_ratio_b{b2}']:.2f} |"
            )
    lines += ["", "Targets (issue 9): int8 file ≤ 35% of fp32, ≤ 1.5 points lost, not slower (ratio ≥ 1.0).", ""]
    lines += [f"- {s['name']}: {json.dumps(s['info'])}" for s in result["sources"]]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{r['model']}\n{r['variant'].split()[0]}", r["int8"][DEFAULT]) for r in result["rows"]]
    labels = [n for n, _ in rows]
    xs = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    axes[0].bar(xs, [100 * q["size_ratio"] for _, q in rows], color="tab:blue")
    axes[0].axhline(35, color="k", ls="--", lw=1, label="target 35%")
    axes[0].set(ylabel="int8 bytes / fp32 bytes (%)", title="file size")
    b1, b2 = result["batches"]
    axes[1].bar(xs - 0.2, [q[f"latency_ratio_b{b1}"] for _, q in rows], 0.4, label=f"batch {b1}")
    axes[1].bar(xs + 0.2, [q[f"latency_ratio_b{b2}"] for _, q in rows], 0.4, label=f"batch {b2}")
    axes[1].axhline(1.0, color="k", ls="--", lw=1)
    axes[1].set(ylabel="fp32 / int8 latency (1 thread, ORT)", title="speed-up of int8 (default settings)")
    for ax in axes:
        ax.set_xticks(xs, labels, fontsize=8, rotation=30, ha="right")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", default=[], help="NAME=RUN_DIR of a trained `lorita train` folder")
    p.add_argument("--random", action="append", default=[], help="reference model with random weights (CIFAR size)")
    p.add_argument("--cifar-dir", default="/work/shared/data/cifar-10-batches-bin")
    p.add_argument("--calibration-samples", type=int, default=512)
    p.add_argument("--val-samples", type=int, default=2000)
    p.add_argument("--batches", type=int, nargs=2, default=[1, 64])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--block-s", type=float, default=0.2, help="seconds per timed block at batch 1")
    p.add_argument("--results", default="benchmarks/results/int8")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    import onnxruntime

    rows, sources = [], _sources(args)
    with tempfile.TemporaryDirectory(prefix="lorita-int8-bench-") as tmp:
        for i, src in enumerate(sources):
            rows += measure(src, list(SETTINGS) if i == 0 else [DEFAULT], args, Path(tmp))
    result = {
        "command": "python benchmarks/int8.py " + " ".join(sys.argv[1:]), "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__, "calibration_samples": args.calibration_samples, "val_samples": args.val_samples,
        "batches": args.batches, "rounds": args.rounds, "rows": rows,
        "sources": [{"name": s["name"], "info": s["info"]} for s in sources],
    }
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    plot(result, out.with_suffix(".png"))


if __name__ == "__main__":
    main()

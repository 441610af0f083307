"""Collect CIFAR runs (``lorita train`` + ``lorita sweep --policy macs``) into one committed summary.

For every run folder given: its config, training curve end points and its MAC-budget sweep; then
one side-by-side table per group of runs that share everything but ``depth`` (same model, weight
decay, epochs, ...), the drop of each depth against its *own* uncompressed test accuracy at each
MAC budget, and the headline check of issue 5: the budgets where depth 1 loses ≥ 5 points and
what the deeper runs lose there. Ranks come from the spectra (MacBudget), nothing is selected on
the test split (test accuracy is only reported).

    .venv/bin/python benchmarks/cifar_summary.py runs/cifar_cpu/wd2e-3-depth1 runs/cifar_cpu/wd2e-3-depth3 \
        --out benchmarks/results/cifar_cpu --title "ResNet-20, CIFAR-10, CPU, 15 epochs"

Writes ``summary.md``, ``summary.json`` and ``accuracy_vs_macs.png`` to ``--out`` and copies each
run's small artefacts (config, metrics, summary, sweep JSON/MD/PNG) into ``--out/<run name>/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

SMALL_FILES = ("config.json", "metrics.jsonl", "summary.json")


def load(run: Path) -> dict[str, Any]:
    cfg = json.loads((run / "config.json").read_text())
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    sweep_file = run / "sweep-macs" / "sweep.json"
    sweep = json.loads(sweep_file.read_text()) if sweep_file.is_file() else None
    return {"name": run.name, "path": str(run), "config": cfg, "metrics": metrics, "sweep": sweep}


def group_key(cfg: dict[str, Any]) -> str:
    keep = {k: v for k, v in cfg.items() if k not in ("depth", "data_dir")}
    return json.dumps(keep, sort_keys=True)


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def group_table(runs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    runs = sorted(runs, key=lambda r: r["config"]["depth"])
    head = "| MAC budget | " + " | ".join(
        f"depth {r['config']['depth']} test % (change) | MACs kept %" for r in runs) + " |"
    sep = "|---:|" + "---:|---:|" * len(runs)
    lines = [head, sep]
    lines.append("| dense | " + " | ".join(
        f"{pct(r['sweep']['dense']['test_acc'])} | 100.0" for r in runs) + " |")
    points = sorted({p["point"] for r in runs for p in r["sweep"]["points"]})
    rows = []
    for pt in points:
        cells, row = [], {"budget": pt}
        for r in runs:
            p = next((p for p in r["sweep"]["points"] if p["point"] == pt), None)
            d = r["config"]["depth"]
            if p is None:
                cells.append("– | –")
                continue
            drop = 100 * (r["sweep"]["dense"]["test_acc"] - p["test_acc"])
            row[f"depth{d}_test"] = p["test_acc"]
            row[f"depth{d}_drop_points"] = drop
            row[f"depth{d}_val_drop_points"] = 100 * (r["sweep"]["dense"]["val_acc"] - p["val_acc"])
            row[f"depth{d}_macs_frac"] = p["macs_frac"]
            cells.append(f"{pct(p['test_acc'])} ({-drop + 0.0:+.2f}) | {100 * p['macs_frac']:.1f}")
        rows.append(row)
        lines.append(f"| {pt:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def headline(rows: list[dict[str, Any]], depths: list[int]) -> list[str]:
    """Budgets where depth 1 loses ≥ 5 points, and what each deeper run loses there."""
    out = []
    if 1 not in depths:
        return out
    for row in rows:
        d1 = row.get("depth1_drop_points")
        if d1 is None or d1 < 5:
            continue
        parts = [f"depth {d}: {row[f'depth{d}_drop_points']:+.2f}" for d in depths
                 if d != 1 and f"depth{d}_drop_points" in row]
        out.append(f"- MAC budget {row['budget']:g}: depth 1 loses {d1:.2f} points; " + ", ".join(
            p.replace(": +", ": loses ").replace(": -", ": gains ") + " points" for p in parts))
    return out


def plot(groups: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    for runs in groups.values():
        for r in sorted(runs, key=lambda r: r["config"]["depth"]):
            sw, c = r["sweep"], r["config"]
            pts = sorted(sw["points"], key=lambda p: p["macs_frac"])
            label = f"depth {c['depth']}, wd {c['weight_decay']:g}"
            line = ax.plot([100 * p["macs_frac"] for p in pts] + [100],
                           [100 * p["test_acc"] for p in pts] + [100 * sw["dense"]["test_acc"]], "o-", ms=3.5,
                           label=label)[0]
            ax.axhline(100 * sw["dense"]["test_acc"], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("MACs kept (% of the dense model, per image)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders written by `lorita train` (+ sweep-macs)")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="LoRITa on CIFAR-10")
    p.add_argument("--note", default="", help="budget / conditions paragraph for the Markdown")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load(Path(r)) for r in args.runs]
    missing = [r["name"] for r in runs if r["sweep"] is None]
    if missing:
        raise SystemExit(f"no sweep-macs/sweep.json in {missing}; run `lorita sweep RUN --policy macs` first")
    for r, src in zip(runs, args.runs, strict=True):
        dst = out / r["name"]
        dst.mkdir(exist_ok=True)
        for f in SMALL_FILES:
            shutil.copy(Path(src) / f, dst / f)
        for f in ("sweep.json", "sweep.md", "sweep.png"):
            if (Path(src) / "sweep-macs" / f).is_file():
                shutil.copy(Path(src) / "sweep-macs" / f, dst / f"sweep-macs.{f.split('.')[-1]}")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(group_key(r["config"]), []).append(r)
    md = [f"# {args.title}", "", args.note, "",
          "Ranks: `MacBudget` on the merged weights (greedy, least energy discarded per MAC saved), "
          "one-shot truncation, no fine-tuning. Test accuracy is only reported; drop = own dense test "
          "accuracy − compressed test accuracy (points). MACs per image; FLOPs = 2·MACs.", ""]
    summary = {"title": args.title, "runs": [], "groups": []}
    for runs_g in groups.values():
        c = runs_g[0]["config"]
        md += [f"## {c['model']}, weight decay {c['weight_decay']:g}, {c['epochs']} epochs, "
               f"{c['optimizer']} lr {c['lr']:g}", ""]
        md.append("| run | depth | final train loss | final val acc % | dense test acc % | wall (min) |")
        md.append("|---|---:|---:|---:|---:|---:|")
        for r in sorted(runs_g, key=lambda r: r["config"]["depth"]):
            last = r["metrics"][-1]
            wall = sum(m["seconds"] for m in r["metrics"]) / 60
            md.append(f"| {r['name']} | {r['config']['depth']} | {last['train_loss']:.4f} | "
                      f"{pct(last['val_acc'])} | {pct(r['sweep']['dense']['test_acc'])} | {wall:.0f} |")
            summary["runs"].append({"name": r["name"], "depth": r["config"]["depth"],
                                    "weight_decay": r["config"]["weight_decay"], "epochs": len(r["metrics"]),
                                    "final_val_acc": last["val_acc"], "dense_test_acc": r["sweep"]["dense"]["test_acc"],
                                    "dense_val_acc": r["sweep"]["dense"]["val_acc"], "wall_minutes": wall})
        table, rows = group_table(runs_g)
        depths = sorted(r["config"]["depth"] for r in runs_g)
        md += ["", table, ""]
        hl = headline(rows, depths)
        md += (["Where depth 1 loses ≥ 5 points:", ""] + hl) if hl else ["Depth 1 never loses ≥ 5 points here."]
        md.append("")
        summary["groups"].append({"config": {k: v for k, v in c.items() if k != "depth"}, "depths": depths,
                                  "rows": rows, "headline": hl})
    plot(groups, out / "accuracy_vs_macs.png", args.title)
    md += ["![accuracy vs MACs](accuracy_vs_macs.png)", ""]
    (out / "summary.md").write_text("\n".join(md))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

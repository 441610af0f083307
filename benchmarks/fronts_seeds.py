"""Seed spread of fronts at equal epochs (issue 10, item 4): the same (depth, weight decay) runs of
``benchmarks/fronts.py`` repeated with other seeds, summarized per depth and MAC budget.

Each input is a ``fronts.py`` result JSON made with one seed (same recipe otherwise); files with the
same seed and different depths are merged (e.g. a ``--set factorize_at=5`` depth-3 file beside a
depth-1 file run next to it), and the report names each depth's recipe where it differs. For every
(depth, weight decay) that all inputs hold, it reports per MAC budget the mean and standard
deviation over seeds of the test accuracy (validation in brackets), one-shot and after the
fine-tune, and the paired difference to depth 1 (same seed, same wd): mean and how many seeds
were ahead. Nothing is picked here, so test accuracy is only reported.

Usage::

    .venv/bin/python benchmarks/fronts_seeds.py \\
        --inputs benchmarks/results/fronts_resnet20_e30.json benchmarks/runs/seeds/s1.json ... \\
        --wd 2e-3 --out benchmarks/results/fronts_resnet20_e30_seeds

Writes ``<out>.json``, ``<out>.md`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fronts import front_figure  # benchmarks/ is on sys.path when this runs as a script

from lorita.io import atomic_write_text


def _runs(spec: str, wd: float | None) -> tuple[int, dict, dict[int, dict]]:
    path, _, only = spec.partition(":")
    keep = {int(d) for d in only.split(",")} if only else None
    res = json.loads(Path(path).read_text())
    sel = [r for r in res["runs"] if (wd is None or abs(r["weight_decay"] - wd) < 1e-12)
           and (keep is None or r["depth"] in keep)]
    runs = {r["depth"]: r for r in sel}
    if len(runs) < len(sel):
        raise SystemExit(f"{path}: several weight decays per depth; choose one with --wd")
    for r in runs.values():
        r["recipe"] = res["config"]
    return res["config"]["seed"], res, runs


def _merged(inputs: list[str], wd: float | None) -> list[tuple[int, dict, dict[int, dict]]]:
    """One ``(seed, first result, {depth: run})`` per seed: same-seed files merge by depth."""
    by_seed: dict[int, tuple[int, dict, dict[int, dict]]] = {}
    for p in inputs:
        seed, res, runs = _runs(p, wd)
        if seed not in by_seed:
            by_seed[seed] = (seed, res, runs)
            continue
        clash = set(runs) & set(by_seed[seed][2])
        if clash:
            raise SystemExit(f"--inputs: seed {seed} has depth {sorted(clash)} in two files; "
                             "keep one with FILE:DEPTHS")
        by_seed[seed][2].update(runs)
    return list(by_seed.values())


def _stats(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs), "values": xs}


def summarize(inputs: list[str], wd: float | None) -> dict:
    """``{"seeds", "depths", "budgets", "cells": {depth: {point: {"test", "val", "diff_test"}}}}``
    with accuracies in %; ``point`` is ``dense`` or ``<budget>/<one_shot|finetuned>``.

    Raises:
        SystemExit: an input lacks a depth the others have, or two inputs share a seed.
    """
    loaded = _merged(inputs, wd)
    seeds = [s for s, _, _ in loaded]
    depths = sorted(set.intersection(*(set(r) for _, _, r in loaded)))
    if not depths:
        raise SystemExit("--inputs: no depth is in every seed's files (check --wd)")
    budgets = [b for b in loaded[0][1]["budgets"] if all(b in res["budgets"] for _, res, _ in loaded)]
    # where a depth's recipe differs from the first depth's (same in every seed, else refused)
    skip = {"seed", "depth", "weight_decay"}
    recipes: dict[str, dict] = {}
    for d in depths:
        diffs = [{k: v for k, v in r[d]["recipe"].items() if k not in skip and r[depths[0]]["recipe"].get(k) != v}
                 for _, _, r in loaded]
        if any(x != diffs[0] for x in diffs):
            raise SystemExit(f"--inputs: depth {d}'s recipe differs between seeds: {diffs}")
        recipes[str(d)] = diffs[0]

    def acc(run: dict, point: str, split: str) -> float:
        if point == "dense":
            return 100 * run["dense"][f"{split}_acc"]
        b, key = point.split("/")
        return 100 * run["points"][b][key][f"{split}_acc"]

    points = ["dense"] + [f"{b:g}/{k}" for b in budgets for k in ("one_shot", "finetuned")]
    cells: dict = {}
    for d in depths:
        cells[str(d)] = {}
        for pt in points:
            test = [acc(r[d], pt, "test") for _, _, r in loaded]
            val = [acc(r[d], pt, "val") for _, _, r in loaded]
            cell = {"test": _stats(test), "val": _stats(val)}
            if d != depths[0]:
                diff = [acc(r[d], pt, "test") - acc(r[depths[0]], pt, "test") for _, _, r in loaded]
                dval = [acc(r[d], pt, "val") - acc(r[depths[0]], pt, "val") for _, _, r in loaded]
                cell["diff_test"] = {**_stats(diff), "ahead": sum(x > 0 for x in diff)}
                cell["diff_val"] = {**_stats(dval), "ahead": sum(x > 0 for x in dval)}
            cells[str(d)][pt] = cell
    first = loaded[0][1]
    return {"inputs": list(inputs), "seeds": seeds, "weight_decay": wd, "depths": depths,
            "budgets": budgets,
            "config": {k: v for k, v in loaded[0][2][depths[0]]["recipe"].items() if k not in ("seed", "depth")},
            "finetune": first["finetune"], "recipes": recipes, "cells": cells}


def markdown(res: dict) -> str:
    d0, depths, cells = res["depths"][0], res["depths"], res["cells"]
    cfg = res["config"]
    n = len(res["seeds"])
    recipe_lines = [f"Depth {d} differs from depth {d0} in: " + ", ".join(f"`{k}={v}`" for k, v in r.items()) + "."
                    for d, r in ((d, res.get("recipes", {}).get(str(d))) for d in depths) if r]
    recipe_lines += [""] if recipe_lines else []
    lines = [
        f"# Fronts over seeds: {cfg['model']}, depth {' vs '.join(map(str, depths))}", "",
        f"Seeds {', '.join(map(str, res['seeds']))}; weight decay {res['weight_decay']:g} for every depth; "
        f"{cfg['optimizer']} lr {cfg['lr']:g}, {cfg['epochs']} epochs"
        + (f" on the first {cfg['limit_train']:,} training images" if cfg.get("limit_train") else "")
        + f"; fine-tune {res['finetune']['epochs']} epoch(s) {res['finetune']['optimizer']} lr "
        f"{res['finetune']['lr']:g}. Inputs: " + ", ".join(f"`{p}`" for p in res["inputs"]) + ".", "",
        f"Cells: test % mean ± sd over {n} seeds (validation mean in brackets). Δ: paired difference to depth "
        f"{d0} (same seed), test mean, and how many of the {n} seeds were ahead (validation in brackets).", "",
        *recipe_lines,
        "| point | " + " | ".join(f"depth {d}" for d in depths)
        + "".join(f" | Δ depth {d} − {d0}" for d in depths[1:]) + " |",
        "|---|" + "---:|" * (2 * len(depths) - 1),
    ]
    for pt in cells[str(d0)]:
        name = "dense" if pt == "dense" else f"{float(pt.split('/')[0]):.0%} {pt.split('/')[1].replace('_', '-')}"
        row = [f"{c['test']['mean']:.2f} ± {c['test']['sd']:.2f} ({c['val']['mean']:.2f})"
               for c in (cells[str(d)][pt] for d in depths)]
        for d in depths[1:]:
            t, v = cells[str(d)][pt]["diff_test"], cells[str(d)][pt]["diff_val"]
            row.append(f"{t['mean']:+.2f}, {t['ahead']}/{n} ({v['mean']:+.2f}, {v['ahead']}/{n})")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    def draw(ax) -> None:
        for i, d in enumerate(res["depths"]):
            c = res["cells"][str(d)]
            for key, style in (("finetuned", "-o"), ("one_shot", ":x")):
                bs = res["budgets"]
                ys = [c[f"{b:g}/{key}"]["test"]["mean"] for b in bs]
                es = [c[f"{b:g}/{key}"]["test"]["sd"] for b in bs]
                ax.errorbar(bs, ys, yerr=es, fmt=style, color=f"C{i}", capsize=3,
                            label=f"depth {d}, {key.replace('_', '-')}")
            ax.axhline(c["dense"]["test"]["mean"], color=f"C{i}", lw=0.8, ls="--")

    front_figure(draw, f"{res['config']['model']}: fronts over seeds",
                 f"test accuracy % (mean ± sd, {len(res['seeds'])} seeds)", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", nargs="+", required=True,
                   help="fronts.py result JSONs, one per seed (or per seed, depth); FILE:1,3 keeps only those depths")
    p.add_argument("--wd", type=float, default=None, help="the weight decay to compare (default: one run per depth)")
    p.add_argument("--out", required=True, help="output stem")
    args = p.parse_args()
    res = summarize(args.inputs, args.wd)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(res, indent=1))
    atomic_write_text(out.with_suffix(".md"), markdown(res))
    plot(res, out.with_suffix(".png"))


if __name__ == "__main__":
    main()

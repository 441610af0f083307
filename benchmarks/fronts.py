"""Fair fronts at equal epochs (issue 10, item 4): depth 1 vs LoRITa depth N, the CLI's defaults.

For one model family, every depth trains with the same recipe and epochs over the same grid of
weight decays (the CLI's training defaults: balanced start, auto factor side, gradient clipping
2.0 for depth > 1). Every trained model is merged, truncated to each MAC budget
(``MacBudget``, one-shot SVD) and then fine-tuned the same short way (same optimizer, lr, epochs
for every depth). Per depth and budget the weight decay is picked on *validation* accuracy (after
the fine-tune; the one-shot column picks on one-shot validation accuracy); test accuracy is
reported once and never used to choose.

Usage (resumable: finished runs and finished points are reused)::

    .venv/bin/python benchmarks/fronts.py --family mnist_fcn --threads 1
    .venv/bin/python benchmarks/fronts.py --family resnet20 --threads 1
    .venv/bin/python benchmarks/fronts.py --family vit_cpu --threads 1

Writes ``benchmarks/results/fronts_<family>.{json,md,png}`` (``--results`` to change) after
every finished run, so an interrupted benchmark still leaves its partial table.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch

from lorita.finetune import FinetuneConfig, finetune
from lorita.io import atomic_path, atomic_write_text
from lorita.ranks.policies import parse_policy, select_ranks
from lorita.runs.config import TrainConfig
from lorita.runs.folder import evaluate_point, load_data, load_run, make_loaders, model_row
from lorita.runs.train import train_run

CIFAR = "../shared/data/cifar-10-batches-bin"
CIFAR_RECIPE = dict(dataset="cifar10", data_dir=CIFAR, epochs=15, batch_size=128, scheduler="cosine",
                    warmup_epochs=1.0, label_smoothing=0.1, augment=True)
#: One entry per family: the training recipe (everything but depth and weight decay), the grid,
#: the depths and the fine-tune every truncated model gets.
FAMILIES: dict[str, dict] = {
    "mnist_fcn": {
        "title": "MNIST FCN 784-512-512-512-10",
        "cfg": dict(model="fcn", dataset="mnist", data_dir="../shared/data/mnist", epochs=20, batch_size=128,
                    optimizer="sgd", lr=0.05, momentum=0.9, scheduler="cosine"),
        "wds": [3e-4, 2e-3], "depths": [1, 3],
        "finetune": dict(epochs=2, optimizer="adam", lr=1e-4),
    },
    "resnet20": {
        "title": "CIFAR-10 ResNet-20",
        "cfg": dict(model="resnet20", optimizer="sgd", lr=0.05, momentum=0.9, **CIFAR_RECIPE),
        "wds": [5e-4, 2e-3], "depths": [1, 3],
        "finetune": dict(epochs=1, optimizer="adam", lr=1e-4),
    },
    "vit_cpu": {
        "title": "CIFAR-10 ViT (dim 128, 4 blocks, 4 heads × 32, MLP 256, patch 4)",
        "cfg": dict(model="vit", model_kwargs=dict(dim=128, num_layers=4, heads=4, dim_head=32, mlp_dim=256),
                    optimizer="adamw", lr=1e-3, **CIFAR_RECIPE),
        "wds": [0.05, 0.2], "depths": [1, 3],
        "finetune": dict(epochs=1, optimizer="adam", lr=1e-4),
    },
}
BUDGETS = [0.7, 0.5, 0.3, 0.2]


def _tag(wd: float) -> str:
    return f"{wd:.0e}".replace("e-0", "e-")


def _row(row: dict) -> dict:
    keep = ("val_acc", "test_acc", "macs", "macs_frac", "params", "params_frac", "ranks")
    return {k: row[k] for k in keep}


def run_one(cfg: TrainConfig, run_dir: Path, budgets: list[float], ft: FinetuneConfig, data) -> dict:
    """Train (or resume) one run, then its dense, one-shot and fine-tuned points (cached in
    ``run_dir/front.json``; a point already there is not recomputed)."""
    if not (run_dir / "summary.json").is_file():
        train_run(cfg, run_dir, progress=False, resume=True, data=data)
    summary = json.loads((run_dir / "summary.json").read_text())
    cache = run_dir / "front.json"
    res = json.loads(cache.read_text()) if cache.is_file() else {"points": {}}
    run = load_run(run_dir, data=data)
    if "dense" not in res:
        res["dense"] = _row(evaluate_point(run, None, "dense")[0])
    train_loader = make_loaders(data, run.cfg)[0]
    for b in budgets:
        if f"{b:g}" in res["points"]:
            continue
        ranks = select_ranks(run.dense, parse_policy(f"macs:{b}", example_inputs=run.example_inputs), *run.targets)
        one_shot, low = evaluate_point(run, ranks, f"macs:{b}")
        low = copy.deepcopy(low)
        t0 = time.perf_counter()
        finetune(low, train_loader, ft, seed=cfg.seed)
        tuned = model_row(run, low.eval(), f"macs:{b} + fine-tune", ranks)
        res["points"][f"{b:g}"] = {"budget": b, "one_shot": _row(one_shot), "finetuned": _row(tuned),
                                   "finetune_seconds": time.perf_counter() - t0}
        atomic_write_text(cache, json.dumps(res, indent=1))
        logging.info("%s @ %g: one-shot val %.4f, fine-tuned val %.4f", run_dir.name, b,
                     one_shot["val_acc"], tuned["val_acc"])
    atomic_write_text(cache, json.dumps(res, indent=1))
    return {"depth": cfg.depth, "weight_decay": cfg.weight_decay, "run": str(run_dir),
            "train_seconds": summary.get("wall_seconds"), "summary": summary, **res}


def reusable(files: list[str], base: TrainConfig, finetune_cfg: dict, budgets: list[float]) -> dict:
    """``{(depth, wd): (run, file)}`` for the finished runs in earlier result ``files`` whose recipe
    (every config field but depth and weight decay), fine-tune and budgets equal this invocation's.

    Raises:
        SystemExit: a file is missing or was made with another recipe (the differing fields named).
    """
    want = {k: v for k, v in base.to_dict().items() if k not in ("depth", "weight_decay", "resume")}
    out = {}
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise SystemExit(f"--reuse {f}: no such file")
        old = json.loads(path.read_text())
        have = {k: v for k, v in old["config"].items() if k not in ("depth", "weight_decay", "resume")}
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if diff or old["finetune"] != finetune_cfg:
            raise SystemExit(f"--reuse {f}: made with another recipe (differs in {diff or ['finetune']}); "
                             "run it with the same --epochs/--limit-train/--seed/--data-dir")
        for r in old["runs"]:
            if all(f"{b:g}" in r["points"] for b in budgets):
                out[r["depth"], r["weight_decay"]] = (r, f)
    return out


def pick(runs: list[dict], depth: int, budget: float | None, key: str) -> dict | None:
    """The run of ``depth`` with the best validation accuracy at ``budget`` (None: dense) for
    ``key`` ("one_shot" | "finetuned"); ties go to the smaller weight decay."""
    cands = []
    for r in runs:
        if r["depth"] != depth:
            continue
        pt = r["dense"] if budget is None else r["points"].get(f"{budget:g}", {}).get(key)
        if pt is not None:
            cands.append((pt["val_acc"], -r["weight_decay"], r, pt))
    if not cands:
        return None
    _, _, r, pt = max(cands, key=lambda c: (c[0], c[1]))
    return {"weight_decay": r["weight_decay"], **pt}


def fronts(runs: list[dict], depths: list[int], budgets: list[float]) -> dict:
    return {str(d): {"dense": pick(runs, d, None, "dense"),
                     **{key: {f"{b:g}": pick(runs, d, b, key) for b in budgets} for key in ("one_shot", "finetuned")}}
            for d in depths}


def _cell(p: dict | None) -> str:
    return "–" if p is None else f"{p['weight_decay']:g} / {100 * p['val_acc']:.2f} / **{100 * p['test_acc']:.2f}**"


def _grid(wds: dict | list, depths: list[int]) -> str:
    if isinstance(wds, list):  # results written before per-depth grids
        wds = {str(d): wds for d in depths}
    return "; ".join(f"depth {d}: {', '.join(f'{w:g}' for w in wds[str(d)])}" for d in depths)


def markdown(result: dict) -> str:
    fam, fr, depths = result["family"], result["fronts"], result["depths"]
    cfg, ft = result["config"], result["finetune"]
    limit = cfg.get("limit_train")
    data = "all training images" if limit is None else f"the first {limit:,} training images"
    lines = [
        f"# Fronts at equal epochs: {FAMILIES[fam]['title']}, depth {' vs '.join(map(str, depths))}", "",
        f"Command: `{result['command']}`", "",
        f"Every depth: {cfg['optimizer']} lr {cfg['lr']:g}, {cfg['scheduler']}, {cfg['epochs']} epochs on {data} "
        f"(5,000 held out for validation), batch {cfg['batch_size']}, seed {cfg['seed']}, warm-up "
        f"{cfg['warmup_epochs']:g} epoch(s), label smoothing {cfg['label_smoothing']:g}, augment {cfg['augment']}; "
        f"depth > 1 with the CLI's defaults (start `{cfg['init']}`, factor side `{cfg['factor_side']}`, gradient "
        f"clipping {cfg['clip_grad_norm']:g}). Weight-decay grid ({_grid(result['wds'], depths)}), picked "
        "on validation. "
        f"Ranks: `MacBudget` (fraction of the dense model's MACs, one-shot SVD of the merged weights); then the "
        f"same fine-tune for every depth: {ft['epochs']} epoch(s) {ft['optimizer']} lr {ft['lr']:g} on the "
        "training split. Cells: picked wd / val % / **test %** (test reported once, never used to pick). "
        f"{result['threads']} torch thread(s) per job on a shared 2-core CPU.", "",
        "| MAC budget | " + " | ".join(f"depth {d} one-shot | depth {d} + fine-tune" for d in depths) + " |",
        "|---:|" + "---:|---:|" * len(depths),
        "| dense | " + " | ".join(f"{_cell(fr[str(d)]['dense'])} | –" for d in depths) + " |",
    ]
    for b in result["budgets"]:
        cells = [f"{_cell(fr[str(d)]['one_shot'][f'{b:g}'])} | {_cell(fr[str(d)]['finetuned'][f'{b:g}'])}"
                 for d in depths]
        lines.append(f"| {b:.0%} | " + " | ".join(cells) + " |")
    lines += ["", "## Every run", "", "| depth | wd | dense val % | dense test % | "
              + " | ".join(f"test % @{b:.0%} (one-shot → fine-tuned)" for b in result["budgets"])
              + " | train s |", "|---:|---:|---:|---:|" + "---:|" * len(result["budgets"]) + "---:|"]
    for r in result["runs"]:
        cells = []
        for b in result["budgets"]:
            p = r["points"].get(f"{b:g}")
            cells.append("–" if p is None else
                         f"{100 * p['one_shot']['test_acc']:.2f} → {100 * p['finetuned']['test_acc']:.2f}")
        lines.append(f"| {r['depth']} | {r['weight_decay']:g} | {100 * r['dense']['val_acc']:.2f} | "
                     f"{100 * r['dense']['test_acc']:.2f} | " + " | ".join(cells)
                     + f" | {r['train_seconds'] or 0:.0f} |")
    lines += ["", f"![fronts](fronts_{fam}.png)"]
    return "\n".join(lines) + "\n"


def front_figure(draw, title: str, ylabel: str, path: Path) -> None:
    """A MACs-kept vs accuracy figure: ``draw(ax)`` adds the lines; written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    draw(ax)
    ax.set_xlabel("MACs kept (fraction of dense)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot(result: dict, path: Path) -> None:
    def draw(ax) -> None:
        for i, d in enumerate(result["depths"]):
            fr = result["fronts"][str(d)]
            color = f"C{i}"
            for key, style in (("finetuned", "-o"), ("one_shot", ":x")):
                pts = [(p["macs_frac"], 100 * p["test_acc"]) for p in fr[key].values() if p is not None]
                if pts:
                    xs, ys = zip(*sorted(pts))
                    ax.plot(xs, ys, style, color=color, label=f"depth {d}, {key.replace('_', '-')}")
            if fr["dense"] is not None:
                ax.axhline(100 * fr["dense"]["test_acc"], color=color, lw=0.8, ls="--")

    front_figure(draw, FAMILIES[result["family"]]["title"], "test accuracy % (wd picked on validation)", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=sorted(FAMILIES), required=True)
    p.add_argument("--depths", type=int, nargs="+", default=None, help="default: the family's")
    p.add_argument("--wds", type=float, nargs="+", default=None, help="weight-decay grid (default: the family's)")
    p.add_argument("--extra", action="append", default=[], metavar="DEPTH:WD",
                   help="one more (depth, weight decay) run beyond the grid, e.g. 3:1e-4 (repeatable)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--limit-train", type=int, default=None, help="train on the first N training images")
    p.add_argument("--budgets", type=float, nargs="+", default=BUDGETS)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="run folders (default: benchmarks/runs/fronts/<family>)")
    p.add_argument("--results", default=None, help="output stem (default: benchmarks/results/fronts_<family>)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="sets",
                   help="override one TrainConfig field of the family's recipe for every run, e.g. "
                        "clip_grad_norm=0 or lr=0.1 (repeatable; run folders and results get a suffix)")
    p.add_argument("--reuse", action="append", default=[], metavar="JSON",
                   help="a fronts result file whose finished runs (same recipe, depth, wd and budgets) "
                        "are taken as they are instead of retraining (repeatable)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    fam = FAMILIES[args.family]
    depths, wds = args.depths or fam["depths"], args.wds or fam["wds"]
    pairs = [(wd, d) for wd in wds for d in depths]
    for item in args.extra:
        try:
            d, wd = item.split(":")
            pairs.append((float(wd), int(d)))
        except ValueError:
            p.error(f"--extra {item!r}: expected DEPTH:WD, e.g. 3:1e-4")
    depths = sorted({d for _, d in pairs})
    grid = {str(d): sorted({wd for wd, dd in pairs if dd == d}) for d in depths}
    over = {k: v for k, v in (("epochs", args.epochs), ("limit_train", args.limit_train),
                              ("data_dir", args.data_dir)) if v is not None}
    sets = {}
    for item in args.sets:
        key, sep, val = item.partition("=")
        if not sep or key not in TrainConfig.__dataclass_fields__ or key in ("depth", "weight_decay"):
            p.error(f"--set {item!r}: expected FIELD=VALUE with a TrainConfig field other than depth and "
                    "weight_decay (those are --depths and --wds)")
        try:
            sets[key] = json.loads(val)
        except json.JSONDecodeError:
            sets[key] = val
    suffix = "".join(f"_{k}{v}" for k, v in sets.items())
    base = TrainConfig(**{**fam["cfg"], **over, **sets, "seed": args.seed})
    ft = FinetuneConfig(**fam["finetune"])
    out = Path(args.out or f"benchmarks/runs/fronts/{args.family}")
    stem = Path(args.results or f"benchmarks/results/fronts_{args.family}{suffix}")
    data = load_data(base)
    argv = sys.argv[1:]  # the command that reproduces the table: --reuse is a cache, not the recipe
    argv = [a for i, a in enumerate(argv) if a != "--reuse" and (i == 0 or argv[i - 1] != "--reuse")
            and not a.startswith("--reuse=")]
    result = {"family": args.family, "command": "python benchmarks/fronts.py " + " ".join(argv),
              "config": base.to_dict(), "finetune": fam["finetune"], "threads": args.threads,
              "depths": depths, "wds": grid, "budgets": args.budgets, "runs": []}
    reused = reusable(args.reuse, base, fam["finetune"], args.budgets)
    for wd, depth in pairs:
        cfg = TrainConfig(**{**base.to_dict(), "depth": depth, "weight_decay": wd})
        run_dir = out / f"d{depth}_wd{_tag(wd)}_e{cfg.epochs}{suffix}"
        t0 = time.perf_counter()
        if (depth, wd) in reused and not (run_dir / "summary.json").is_file():
            logging.info("%s taken from %s", run_dir.name, reused[depth, wd][1])
            result["runs"].append(reused[depth, wd][0])
        else:
            result["runs"].append(run_one(cfg, run_dir, args.budgets, ft, data))
        logging.info("%s done (%.0f s)", run_dir.name, time.perf_counter() - t0)
        result["fronts"] = fronts(result["runs"], depths, args.budgets)
        stem.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stem.with_name(stem.name + ".json"), json.dumps(result, indent=1))
        atomic_write_text(stem.with_name(stem.name + ".md"), markdown(result))
        plot(result, stem.with_name(stem.name + ".png"))


if __name__ == "__main__":
    main()

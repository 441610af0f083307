"""``lorita`` command line: train, compress, sweep, report, demo (the only place with argparse).

Errors in user input end the program with one line ``lorita: error: …`` and exit code 2 (no
traceback; ``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorita import __version__

logger = logging.getLogger("lorita.cli")

_USER_ERRORS = (ValueError, TypeError, OSError, KeyError, FloatingPointError)


def _targets(text: str | None) -> Any:
    """``--target-modules``: a regex, or a comma-separated list of names (``fc1,fc2``)."""
    if text is None:
        return None
    if "," in text:
        return [t.strip() for t in text.split(",") if t.strip()]
    return text


def _json_dict(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return obj


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _add_train_args(p: argparse.ArgumentParser, demo: bool = False) -> None:
    from lorita.runs.config import TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("data")
    if not demo:
        g.add_argument("--model", default=d.model, help="reference model (default: %(default)s)")
        g.add_argument("--dataset", default=d.dataset, help="dataset (default: %(default)s)")
    g.add_argument("--model-kwargs", type=_json_dict, default={}, help='JSON overrides, e.g. \'{"hidden": [256]}\'')
    g.add_argument("--data-dir", default=None, help="folder with the data files (default: data/<dataset>)")
    g.add_argument("--val-size", type=int, default=d.val_size, help="validation images carved from train (%(default)s)")
    g.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the validation split (%(default)s)")
    g.add_argument("--no-verify", action="store_true", help="skip dataset checksum verification")
    g.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    g = p.add_argument_group("LoRITa")
    if not demo:
        g.add_argument("--depth", type=int, default=d.depth, help="factors per layer, N (1 = plain; %(default)s)")
        g.add_argument("--target-modules", type=_targets, default=None, help="regex or comma list of layer names")
        g.add_argument("--exclude-modules", type=_targets, default=None, help="regex or comma list of layer names")
        g.add_argument("--init", choices=["default", "preserve"], default=d.init, help="factor init (%(default)s)")
    g = p.add_argument_group("optimization")
    from lorita.runs.demo import DEMO_RECIPE

    r = DEMO_RECIPE if demo else {}
    g.add_argument("--optimizer", choices=["sgd", "adamw", "adam"], default=r.get("optimizer", d.optimizer))
    g.add_argument("--lr", type=float, default=r.get("lr", d.lr), help="learning rate (%(default)s)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (%(default)s)")
    g.add_argument("--weight-decay", type=float, default=r.get("weight_decay", d.weight_decay),
                   help="L2 coefficient on the factors (and, with --decay all, on everything)")
    g.add_argument("--decay", choices=["all", "weights", "factors"], default=d.decay,
                   help="what to decay (%(default)s)")
    g.add_argument("--epochs", type=int, default=r.get("epochs", d.epochs), help="(%(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--scheduler", choices=["cosine", "constant", "step"], default=d.scheduler)
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--augment", action="store_true", help="training augmentation (CIFAR: crop + flip)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed for init and shuffling (%(default)s)")
    g.add_argument("--device", default=d.device, help="cpu | cuda | cuda:N (%(default)s)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    if demo:  # one thread: a predictable time even on a busy machine, where two threads can be 10x slower
        g.add_argument("--threads", type=int, default=1, help="torch CPU threads (%(default)s)")
    else:
        g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _config_from(args: argparse.Namespace, **over: Any):
    from lorita.runs.config import TrainConfig

    fields = dict(
        model=getattr(args, "model", "fcn"),
        model_kwargs=getattr(args, "model_kwargs", {}),
        dataset=getattr(args, "dataset", "mnist"),
        data_dir=args.data_dir,
        val_size=args.val_size,
        split_seed=args.split_seed,
        verify=not args.no_verify,
        limit_train=args.limit_train,
        depth=getattr(args, "depth", 3),
        target_modules=getattr(args, "target_modules", None),
        exclude_modules=getattr(args, "exclude_modules", None),
        init=getattr(args, "init", "default"),
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        decay=args.decay,
        epochs=args.epochs,
        batch_size=args.batch_size,
        scheduler=args.scheduler,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
    )
    fields.update(over)
    return TrainConfig(**fields)


def cmd_train(args: argparse.Namespace) -> int:
    from lorita import distributed
    from lorita.runs.train import train_run

    cfg = _config_from(args)  # validates the flags before any process is started
    if args.nproc < 1:
        raise ValueError(f"`--nproc` must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not distributed.launched():
        return distributed.relaunch(args.argv, args.nproc)
    summary = train_run(cfg, args.out, progress=not args.no_progress, resume=args.resume,
                        overwrite=args.overwrite)
    if "val_acc" not in summary:  # a DDP rank other than 0: rank 0 reports
        return 0
    print(f"trained {cfg.model} depth {cfg.depth}: val acc {100 * summary['val_acc']:.2f}% "
          f"in {summary['wall_seconds']:.0f}s -> {args.out}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from lorita.runs.compress import compress_run
    from lorita.runs.folder import RunFolder

    if args.search is not None:
        return cmd_compress_search(args)
    if args.policy is None:
        raise ValueError("give a rank policy (--policy energy:0.99 ...) or --search greedy --tolerance 1.0")
    if args.quantize is not None:
        _check_quantize(args.quantize)
    out = args.out or str(RunFolder(args.run).default_out("compress"))
    rep = compress_run(args.run, args.policy, out, data_dir=args.data_dir, device=args.device)
    if args.quantize is not None:
        from lorita.runs.compress import quantize_compressed

        rep = quantize_compressed(out, data_dir=args.data_dir)
        q = rep["int8"]
        print(f"int8:     val {100 * q['val_acc']:.2f}%  test {100 * q['test_acc']:.2f}%  "
              f"{q['bytes']:,} bytes (low-rank float: {rep['low_rank']['bytes']:,})")
    d, lr = rep["dense"], rep["low_rank"]
    print(f"dense:    val {100 * d['val_acc']:.2f}%  test {100 * d['test_acc']:.2f}%  "
          f"params {d['params']:,}  MACs {d['macs']:,}")
    print(f"low-rank: val {100 * lr['val_acc']:.2f}%  test {100 * lr['test_acc']:.2f}%  "
          f"params {lr['params']:,}  MACs {lr['macs']:,}  "
          f"({100 * lr['weight_params_frac']:.1f}% of targeted weights) -> {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from lorita.runs.folder import RunFolder
    from lorita.runs.sweep import sweep_run

    out = args.out or str(RunFolder(args.run).default_out("sweep", args.policy))
    res = sweep_run(args.run, args.policy, args.points, out, data_dir=args.data_dir,
                    progress=not args.no_progress, search_tolerances=args.search_tolerances,
                    device=args.device)
    print((Path(out) / RunFolder.SWEEP_MD).read_text())
    print(f"-> {out}/sweep.json, sweep.md, sweep.png ({len(res['points'])} points)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lorita.runs.report import report_runs

    path = report_runs(args.runs, args.out, data_dir=args.data_dir, labels=args.labels, device=args.device,
                       progress=not args.no_progress)
    print(f"-> {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lorita.runs.demo import run_demo

    cfg = _config_from(args, model="fcn", dataset="mnist", depth=1)
    text = run_demo(cfg, args.out, depths=tuple(args.depths), budgets=args.budgets, progress=not args.no_progress)
    print(text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lorita.export import ONNX_ATOL, ONNX_RTOL
    from lorita.runs.export import export_dir

    # torch.onnx warns about optional torchvision ops it skips and its own internal deprecations;
    # neither is actionable here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path, diff = export_dir(args.dir, args.onnx, form=args.form, policy=args.policy, data_dir=args.data_dir)
    tol = f"{ONNX_ATOL:g} + {ONNX_RTOL:g}·|y|"
    check = "" if diff is None else f" (onnxruntime vs PyTorch: max |diff| {diff:.2g} <= {tol})"
    print(f"exported {args.form} model -> {path}{check}")
    return 0


# --- rank search, fine-tuning, distillation, int8 (issue 3) ---------------------------------------
def _check_quantize(kind: str) -> None:
    from lorita.quantize import int8_available

    reason = int8_available()
    if reason is not None:
        raise ValueError(f"--quantize {kind} is not available here: {reason}")


def _search_config(args: argparse.Namespace):
    from lorita.finetune import DistillConfig, FinetuneConfig
    from lorita.ranks.search import GreedySearch, parse_budget

    budget = None if args.budget is None else parse_budget(args.budget)
    start = None
    if args.start is not None:
        from lorita.ranks.policies import parse_policy

        if args.start.strip().lower().startswith("macs:"):
            raise ValueError(f"--start {args.start}: a MAC budget cannot be a start here; "
                             f"use energy:F, global:F, params:F, ratio:F or rank:R")
        start = parse_policy(args.start)
    ft = None
    if args.finetune_epochs or args.distill:
        distill = DistillConfig(args.distill_temperature, args.distill_weight) if args.distill else None
        ft = FinetuneConfig(epochs=max(1, args.finetune_epochs), max_batches=args.finetune_batches,
                            optimizer=args.finetune_optimizer, lr=args.finetune_lr, distill=distill,
                            when=args.finetune_when)
    return GreedySearch(tolerance=args.tolerance, budget=budget, initial_step=args.initial_step,
                        multiple=args.multiple, criterion=args.criterion, keep_dense=not args.no_keep_dense,
                        finetune=ft, seed=args.seed, start=start)


def cmd_compress_search(args: argparse.Namespace) -> int:
    from lorita.runs.compress import compress_search_run
    from lorita.runs.folder import RunFolder

    if args.policy is not None:
        raise ValueError("give either --policy (one-shot) or --search (greedy), not both")
    if args.quantize is not None:
        _check_quantize(args.quantize)
    cfg = _search_config(args)
    out = args.out or str(RunFolder(args.run).default_out("search"))
    rep = compress_search_run(args.run, out, cfg, data_dir=args.data_dir, quantize=args.quantize,
                              val_samples=args.val_samples, exclude_modules=args.exclude_modules,
                              progress=not args.no_progress, device=args.device)
    for key in ("dense", "low_rank", "int8"):
        r = rep.get(key)
        if r:
            print(f"{r['label']}: val {100 * r['val_acc']:.2f}%  test {100 * r['test_acc']:.2f}%  "
                  f"params {r['params']:,}  MACs {r['macs']:,} ({100 * r['macs_frac']:.1f}%)  "
                  f"{r['bytes']:,} bytes")
    print(f"search: {rep['search']['stop_reason']} -> {out} (search_trace.json, report.md)")
    return 0


def _add_search_args(c: argparse.ArgumentParser) -> None:
    g = c.add_argument_group("rank search (instead of --policy)")
    g.add_argument("--search", choices=["greedy"], default=None,
                   help="greedy layer-by-layer rank reduction chosen on the validation split")
    g.add_argument("--tolerance", type=float, default=1.0,
                   help="allowed drop of validation accuracy in points (%(default)s)")
    g.add_argument("--budget", default=None, help="stop once met: params:F or macs:F (fraction of dense)")
    g.add_argument("--initial-step", type=int, default=None, help="first rank step (default: max rank / 8)")
    g.add_argument("--start", default=None,
                   help="warm start from a one-shot policy's ranks, e.g. energy:0.9999 (default: full rank)")
    g.add_argument("--multiple", type=int, default=1,
                   help="round ranks down to a multiple of this (%(default)s)")
    g.add_argument("--criterion", choices=["loss", "loss_per_cost"], default="loss",
                   help="pick the reduction with the lowest val loss, or loss increase per MAC saved")
    g.add_argument("--no-keep-dense", action="store_true",
                   help="allow truncated dense layers that save nothing (the paper's behaviour)")
    g.add_argument("--exclude-modules", type=_targets, default=None,
                   help="layers not to search (regex or comma list)")
    g.add_argument("--val-samples", type=int, default=None, help="use only the first N validation images")
    g.add_argument("--seed", type=int, default=0, help="seed for fine-tuning (%(default)s)")
    g = c.add_argument_group("fine-tuning and distillation (with --search)")
    g.add_argument("--finetune-epochs", type=int, default=0, help="epochs per fine-tune; 0 = no fine-tuning")
    g.add_argument("--finetune-batches", type=int, default=None, help="cap on batches per fine-tune")
    g.add_argument("--finetune-lr", type=float, default=1e-4, help="fine-tuning learning rate (%(default)s)")
    g.add_argument("--finetune-optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    g.add_argument("--finetune-when", choices=["recover", "every"], default="recover",
                   help="recover: only when no reduction fits (paper); every: after each step too")
    g.add_argument("--distill", action="store_true",
                   help="distill from the dense merged model while fine-tuning")
    g.add_argument("--distill-temperature", type=float, default=4.0)
    g.add_argument("--distill-weight", type=float, default=0.5, help="share of the soft-target loss")
    g = c.add_argument_group("quantization")
    g.add_argument("--quantize", choices=["int8"], default=None,
                   help="also write a dynamic-int8 copy of the low-rank model (Linear layers)")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads`` for the commands that evaluate a trained run."""
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="cpu", help="where to evaluate (and search/fine-tune): cpu | cuda | cuda:N")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lorita",
        description="LoRITa: train networks to be low-rank (factorize, weight decay, merge, truncate).",
    )
    p.add_argument("--version", action="version", version=f"lorita {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    # the same flags after the command (`lorita compress RUN --debug`); SUPPRESS keeps the values
    # given before it when they are not repeated
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("general")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log INFO messages")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    g.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS, help="hide progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", parents=[common], help="train a (factorized) reference model")
    _add_train_args(t)
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--resume", action="store_true",
                   help="continue OUT from its last finished epoch (same config; to train longer, start a new run)")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in OUT")
    t.add_argument("--nproc", type=int, default=1,
                   help="DDP processes on this machine, relaunched through torchrun (gloo on CPU, nccl on CUDA)")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("compress", parents=[common], help="merge, choose ranks, split into low-rank layers, report")
    c.add_argument("run", help="folder written by `lorita train`")
    c.add_argument("--policy", default=None,
                   help="energy:0.99 | ratio:0.1 | global:0.05 | params:0.05 | macs:0.1 | rank:16")
    c.add_argument("--out", default=None, help="output folder (default: RUN/compressed, RUN/searched)")
    c.add_argument("--data-dir", default=None, help="override the run's data folder")
    _add_runtime_args(c)
    _add_search_args(c)
    c.set_defaults(func=cmd_compress)

    s = sub.add_parser(
        "sweep", parents=[common], help="accuracy vs cost over many policy points (JSON + Markdown + PNG)"
    )
    s.add_argument("run", help="folder written by `lorita train`")
    s.add_argument("--policy", default="energy", choices=["energy", "ratio", "global", "params", "macs", "rank"])
    s.add_argument("--points", type=_floats, default=None, help="comma-separated policy values")
    s.add_argument("--out", default=None, help="output folder (default: RUN/sweep-POLICY)")
    s.add_argument("--data-dir", default=None, help="override the run's data folder")
    _add_runtime_args(s)
    s.add_argument("--search-tolerances", type=_floats, default=None,
                   help="also run the greedy rank search at these tolerances (points) and plot them")
    s.set_defaults(func=cmd_sweep)

    r = sub.add_parser("report", parents=[common], help="spectra and accuracy-vs-params plots for one or more runs")
    r.add_argument("runs", nargs="+", help="folders written by `lorita train`")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--labels", nargs="+", default=None, help="one label per run (default: depth N, wd W)")
    r.add_argument("--data-dir", default=None, help="override the runs' data folder")
    _add_runtime_args(r)
    r.set_defaults(func=cmd_report)

    e = sub.add_parser("export", parents=[common], help="export a compressed model to ONNX, checked with onnxruntime")
    e.add_argument("dir", help="folder written by `lorita compress` (or by `lorita train`, with --policy)")
    e.add_argument("--onnx", required=True, help="output .onnx file")
    e.add_argument("--form", choices=["low_rank", "dense"], default="low_rank", help="which model (%(default)s)")
    e.add_argument("--policy", default=None, help="training folders: compress with this policy first")
    e.add_argument("--data-dir", default=None, help="training folders: override the run's data folder")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser(
        "demo", parents=[common], help="the main job: depth 1 vs depth 3 FCN on bundled MNIST, swept and reported"
    )
    _add_train_args(d, demo=True)
    d.add_argument("--out", default="runs/demo", help="output folder (%(default)s)")
    d.add_argument("--depths", type=int, nargs="+", default=[1, 3], help="depths to compare (%(default)s)")
    d.add_argument("--budgets", type=_floats, default=None, help="params budgets to sweep")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for `train --nproc` relaunches
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        rc = args.func(args)
    except _USER_ERRORS as exc:
        if args.debug:
            raise
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            msg = f"{exc.filename}: {exc.strerror}"
            if isinstance(exc, FileExistsError | NotADirectoryError):
                msg += " (a file is in the way of an output folder; choose another --out)"
        print(f"lorita: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lorita: interrupted", file=sys.stderr)
        return 130
    logger.info("done in %.1fs", time.perf_counter() - t0)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

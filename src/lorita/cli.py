"""``lorita`` command line: train, compress, sweep, report, export, bench, demo (the only place with argparse).

Errors in user input end the program with one line ``lorita: error: …`` and exit code 2 (no
traceback; ``--debug`` shows it). The library names its parameters in errors (```data_dir```,
```overwrite=True```); :func:`flag_message` turns those into this CLI's flags. Anything else is a
bug in lorita: its traceback is shown with a line saying so (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from lorita import __version__
from lorita.commands import cmd_bench, cmd_compress, cmd_demo, cmd_export, cmd_report, cmd_sweep, cmd_train, recipe_help

logger = logging.getLogger("lorita.cli")

#: What counts as a user error: bad values (ValueError), files (OSError), a diverged run.
#: TypeError, KeyError and the rest are lorita's own bugs and are not dressed up as user errors.
_USER_ERRORS = (ValueError, OSError, FloatingPointError)

#: Library parameter → CLI flag, for :func:`flag_message`.
_FLAGS = {
    "out_dir": "--out", "data_dir": "--data-dir", "resume": "--resume", "overwrite": "--overwrite",
    "verify": "--no-verify", "model_kwargs": "--model-kwargs", "device": "--device", "labels": "--labels",
    "policy": "--policy", "points": "--points", "form": "--form", "augment": "--augment", "amp": "--amp",
    "nproc": "--nproc", "quantize": "--quantize", "exclude_modules": "--exclude-modules",
    "target_modules": "--target-modules", "finetune": "--finetune-epochs", "onnx_path": "--onnx",
    "eval_batch_size": "--eval-batch-size", "depth": "--depth", "lr": "--lr", "weight_decay": "--weight-decay",
    "epochs": "--epochs", "batch_size": "--batch-size", "momentum": "--momentum", "seed": "--seed",
    "warmup_epochs": "--warmup-epochs", "label_smoothing": "--label-smoothing", "val_size": "--val-size",
    "limit_train": "--limit-train", "optimizer": "--optimizer", "scheduler": "--scheduler", "decay": "--decay",
    "fraction": "--policy value", "ratio": "--policy value", "energy": "--policy value",
    "rel_sigma": "--policy value", "layer_cap": "--policy cap",
    "calibration_samples": "--calibration-samples", "val_samples": "--val-samples", "activations": "--int8-activations",
    "runtime": "--runtime", "runtimes": "--runtime", "batches": "--batch", "threads": "--threads", "rounds": "--rounds",
    "channels_last": "--channels-last", "split": "--split", "latency_batch": "--latency-batch",
    "split_batch": "--latency-batch",
    "init": "--init", "init_scale": "--init-scale", "factor_side": "--factor-side",
    "clip_grad_norm": "--clip-grad-norm", "init_from": "--init-from", "factorize_at": "--factorize-at",
    "multiple": "--multiple",
}


def flag_message(msg: str) -> str:
    """Rewrite the library's ```param``` / ```param=value``` mentions as CLI flags.

    ```data_dir``` → ``--data-dir``; ```overwrite=True``` → ``--overwrite``; ```verify=False``` →
    ``--no-verify``; ```device='cpu'``` → ``--device cpu``. Unknown names are left as they are.
    """

    def sub(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        flag = _FLAGS.get(name)
        if flag is None:
            return m.group(0)
        if value is None or value in ("True", "False"):
            return flag
        return f"{flag} {value.strip(chr(39) + chr(34))}"

    return re.sub(r"`([a-z_]+)(?:=([^`]*))?`", sub, msg)


class _FlagFormatter(logging.Formatter):
    """Log lines as the CLI user reads them: library parameter names shown as flags."""

    def format(self, record: logging.LogRecord) -> str:
        return flag_message(super().format(record))


class _Help(argparse.HelpFormatter):
    """Shows ``(default: X)`` after every option that has a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if "%(default)" in text or d in (None, False, argparse.SUPPRESS) or d == [] or d == {}:
            return text
        return f"{text} (default: %(default)s)".strip()


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``lorita: error: … (see lorita train --help)``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"lorita: error: {message} (see {self.prog} --help)\n")


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


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _add_train_args(p: argparse.ArgumentParser, demo: bool = False) -> None:
    from lorita.data import DATASETS
    from lorita.engine import OPTIMIZERS, SCHEDULERS
    from lorita.layers.base import FACTOR_SIDES, INITS
    from lorita.models import MODELS
    from lorita.optim import DECAY_CHOICES
    from lorita.runs.config import TrainConfig
    from lorita.runs.demo import DEMO_RECIPE

    d = TrainConfig()
    g = p.add_argument_group("data")
    if not demo:
        g.add_argument("--model", default=d.model, choices=sorted(MODELS), help="reference model")
        g.add_argument("--recipe", choices=("model", "none"), default="model", help=recipe_help())
        g.add_argument("--dataset", default=d.dataset, choices=sorted(DATASETS), help="dataset")
    g.add_argument("--model-kwargs", type=_json_dict, default={}, help='JSON overrides, e.g. \'{"hidden": [256]}\'')
    g.add_argument("--data-dir", default=None, help="folder with the data files (default: data/<dataset>)")
    g.add_argument("--val-size", type=int, default=d.val_size, help="validation images carved from train")
    g.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the validation split")
    g.add_argument("--no-verify", action="store_true", help="skip dataset checksum verification")
    g.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    g = p.add_argument_group("LoRITa")
    if not demo:
        g.add_argument("--depth", type=int, default=d.depth, help="factors per layer, N (1 = plain)")
        g.add_argument("--target-modules", type=_targets, default=None, help="regex or comma list of layer names")
        g.add_argument("--exclude-modules", type=_targets, default=None, help="regex or comma list of layer names")
        g.add_argument("--init", choices=list(INITS), default=d.init,
                       help="factor start: balanced = the layer's default init spread evenly over the factors "
                            "(same product); default = the paper's per-factor init; preserve = identity factors")
        g.add_argument("--init-scale", type=float, default=d.init_scale,
                       help="the start's product is init_scale x W (each factor x init_scale^(1/depth))")
        g.add_argument("--factor-side", choices=list(FACTOR_SIDES), default=d.factor_side,
                       help="where Linear layers keep their square factors: auto = the smaller side; "
                            "input = the paper's in x in")
        g.add_argument("--init-from", default=None,
                       help="start from these dense weights: a run folder or a .safetensors file (the pretrained "
                            "path; with --init balanced or preserve the product equals them at step 0)")
        g.add_argument("--factorize-at", type=int, default=d.factorize_at, metavar="K",
                       help="factorize late: K plain (depth 1) epochs first (kept in OUT/plain), then the "
                            "remaining epochs at --depth from that model (exact at the switch), one lr schedule over "
                            "--epochs; 0 = from the start")
        g.add_argument("--clip-grad-norm", type=float, default=d.clip_grad_norm,
                       help="gradient-norm bound for factorized models (depth > 1); 0 = off")
    g = p.add_argument_group("optimization")
    r = DEMO_RECIPE if demo else {}
    g.add_argument("--optimizer", choices=list(OPTIMIZERS), default=r.get("optimizer", d.optimizer), help="optimizer")
    g.add_argument("--lr", type=float, default=r.get("lr", d.lr), help="learning rate")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=r.get("weight_decay", d.weight_decay),
                   help="L2 coefficient on the factors (and, with --decay all, on everything)")
    g.add_argument("--decay", choices=list(DECAY_CHOICES), default=d.decay, help="what to decay")
    g.add_argument("--epochs", type=int, default=r.get("epochs", d.epochs), help="epochs")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    g.add_argument("--scheduler", choices=list(SCHEDULERS), default=d.scheduler, help="learning-rate schedule")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up epochs")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="label smoothing")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                   help="training augmentation (CIFAR: crop + flip)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed for init and shuffling")
    g.add_argument("--device", default=d.device, help="cpu | cuda | cuda:N")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    if demo:  # one thread: a predictable time even on a busy machine, where two threads can be 10x slower
        g.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    else:
        g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _add_search_args(c: argparse.ArgumentParser) -> None:
    g = c.add_argument_group("rank search (instead of --policy)")
    g.add_argument("--search", choices=["greedy"], default=None,
                   help="greedy layer-by-layer rank reduction chosen on the validation split")
    g.add_argument("--tolerance", type=float, default=None,
                   help="allowed drop of validation accuracy in points (default: 1.0)")
    g.add_argument("--budget", default=None, help="stop once met: params:F or macs:F (fraction of dense)")
    g.add_argument("--initial-step", type=int, default=None, help="first rank step (default: max rank / 8)")
    g.add_argument("--start", default=None,
                   help="warm start from a one-shot policy's ranks, e.g. energy:0.9999 (default: full rank)")
    g.add_argument("--multiple", type=int, default=None,
                   help="rank granularity, default 1. Search: ranks rounded down to a multiple of this. "
                        "--policy: budgets drop singular values in blocks of it, per-layer policies round up, "
                        "layer:F rounds down "
                        "(8 suits ONNX Runtime's channel blocks on AVX2, 16 on AVX-512)")
    g.add_argument("--criterion", choices=["loss", "loss_per_cost"], default=None,
                   help="pick the reduction with the lowest val loss, or loss increase per MAC saved (default: loss)")
    g.add_argument("--no-keep-dense", action="store_true",
                   help="allow truncated dense layers that save nothing (the paper's behaviour)")
    g.add_argument("--val-samples", type=int, default=None, help="use only the first N validation images")
    g.add_argument("--seed", type=int, default=0, help="seed for fine-tuning")
    g = c.add_argument_group("fine-tuning and distillation (after --policy, or inside --search)")
    g.add_argument("--finetune-epochs", type=int, default=0, help="epochs per fine-tune; 0 = no fine-tuning")
    g.add_argument("--finetune-batches", type=int, default=None, help="cap on batches per fine-tune")
    g.add_argument("--finetune-lr", type=float, default=1e-4, help="fine-tuning learning rate")
    g.add_argument("--finetune-optimizer", choices=["adam", "adamw", "sgd"], default="adam", help="optimizer")
    g.add_argument("--finetune-when", choices=["recover", "every"], default="recover",
                   help="search: recover = only when no reduction fits (paper); every = after each step too")
    g.add_argument("--distill", action="store_true", help="distill from the dense merged model while fine-tuning")
    g.add_argument("--distill-temperature", type=float, default=4.0, help="distillation temperature")
    g.add_argument("--distill-weight", type=float, default=0.5, help="share of the soft-target loss")
    g = c.add_argument_group("quantization")
    g.add_argument("--quantize", choices=["int8"], default=None,
                   help="also write a dynamic-int8 copy of the low-rank model (Linear layers)")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads`` for the commands that evaluate a trained run."""
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="cpu", help="where to evaluate (and search/fine-tune): cpu | cuda | cuda:N")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--eval-batch-size", type=int, default=256,
                   help="images per evaluation forward pass (1000 made CIFAR evaluation half system time)")


def _common() -> argparse.ArgumentParser:
    # the general flags after the command too (`lorita compress RUN --debug`); SUPPRESS keeps the
    # values given before it when they are not repeated
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("general")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log INFO messages")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    g.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS, help="hide progress bars")
    return common


def build_parser() -> argparse.ArgumentParser:
    from lorita.ranks.policies import POLICY_KINDS

    p = _Parser(prog="lorita", formatter_class=_Help,
                description="LoRITa: train networks to be low-rank (factorize, weight decay, merge, truncate).")
    p.add_argument("--version", action="version", version=f"lorita {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    kw = {"parents": [_common()], "formatter_class": _Help}
    policies = " | ".join(f"{k}:F" if k != "rank" else "rank:R" for k in POLICY_KINDS)

    t = sub.add_parser("train", help="train a (factorized) reference model", **kw)
    _add_train_args(t)
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--resume", action="store_true",
                   help="continue OUT from its last finished epoch with its saved config (other flags optional)")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in OUT")
    t.add_argument("--nproc", type=int, default=1,
                   help="DDP processes on this machine, relaunched through torchrun (gloo on CPU, nccl on CUDA)")
    t.set_defaults(func=cmd_train, subparser=t)

    c = sub.add_parser("compress", help="merge, choose ranks, split into low-rank layers, report", **kw)
    c.add_argument("run", help="folder written by `lorita train`")
    c.add_argument("--policy", default=None, help=f"one-shot rank policy: {policies} "
                   "(params/macs/latency take a per-layer cap: macs:0.2,cap=0.5)")
    c.add_argument("--out", default=None, help="output folder (default: RUN/compressed, RUN/searched)")
    c.add_argument("--overwrite", action="store_true", help="replace an earlier compression in OUT")
    c.add_argument("--exclude-modules", type=_targets, default=None,
                   help="layers to keep dense (regex or comma list; default: the run's own exclusions)")
    c.add_argument("--data-dir", default=None, help="override the run's data folder")
    _add_runtime_args(c)
    g = c.add_argument_group("latency")
    g.add_argument("--split", choices=["macs", "latency"], default="macs",
                   help="split where it saves MACs, or only where the pair measures faster (eager, 1 thread)")
    g.add_argument("--latency", action="store_true",
                   help="also measure the low-rank model's latency ratio vs dense (eager, 1 thread)")
    g.add_argument("--latency-batch", type=int, default=1, help="batch size for --latency and --split latency")
    _add_search_args(c)
    c.set_defaults(func=cmd_compress)

    s = sub.add_parser("sweep", help="accuracy vs cost over many policy points (JSON + Markdown + PNG)", **kw)
    s.add_argument("run", help="folder written by `lorita train`")
    s.add_argument("--policy", default="energy", choices=[k for k in POLICY_KINDS if k != "latency"],
                   help="policy kind to sweep (a measured latency budget is one model, not a sweep)")
    s.add_argument("--points", type=_floats, default=None, help="comma-separated policy values")
    s.add_argument("--out", default=None, help="output folder (default: RUN/sweep-POLICY)")
    s.add_argument("--data-dir", default=None, help="override the run's data folder")
    _add_runtime_args(s)
    s.add_argument("--latency", action="store_true",
                   help="also measure each point's latency ratio vs dense (eager, 1 thread)")
    s.add_argument("--latency-batch", type=int, default=1, help="batch size for --latency")
    s.add_argument("--exclude-modules", type=_targets, default=None,
                   help="layers to keep dense at every point (regex or comma list; default: the run's own exclusions)")
    s.add_argument("--multiple", type=int, default=1,
                   help="rank granularity of every point (e.g. 8: ONNX Runtime's conv blocks on AVX2)")
    s.add_argument("--layer-cap", type=float, default=None, metavar="C",
                   help="params/macs: also cap every layer at C of its own cost (compress's ,cap=C)")
    s.add_argument("--search-tolerances", type=_floats, default=None,
                   help="also run the greedy rank search at these tolerances (points) and plot them")
    s.set_defaults(func=cmd_sweep)

    r = sub.add_parser("report", help="spectra and accuracy-vs-params plots for one or more runs", **kw)
    r.add_argument("runs", nargs="+", help="folders written by `lorita train`")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--labels", nargs="+", default=None, help="one label per run (default: depth N, wd W)")
    r.add_argument("--data-dir", default=None, help="override the runs' data folder")
    _add_runtime_args(r)
    r.set_defaults(func=cmd_report)

    _add_export_parser(sub, kw)
    _add_bench_parser(sub, kw)

    d = sub.add_parser("demo", help="the main job: depth 1 vs depth 3 FCN on bundled MNIST, swept and reported", **kw)
    _add_train_args(d, demo=True)
    d.add_argument("--out", default="runs/demo", help="output folder")
    d.add_argument("--depths", type=int, nargs="+", default=[1, 3], help="depths to compare")
    d.add_argument("--budgets", type=_floats, default=None, help="params budgets to sweep")
    d.add_argument("--jobs", type=int, default=None,
                   help="depths trained at once, one process each with --threads threads "
                        "(default: as many as the usable CPU cores allow; 1: one after the other)")
    d.set_defaults(func=cmd_demo)
    return p


def _add_export_parser(sub: Any, kw: dict[str, Any]) -> None:
    e = sub.add_parser("export", help="export a compressed model to ONNX, checked with onnxruntime", **kw)
    e.add_argument("dir", help="folder written by `lorita compress` (or by `lorita train`, with --policy)")
    e.add_argument("--onnx", required=True, help="output .onnx file")
    e.add_argument("--form", choices=["low_rank", "dense"], default="low_rank", help="which model")
    e.add_argument("--policy", default=None, help="training folders: compress with this policy first")
    e.add_argument("--overwrite", action="store_true", help="replace an existing ONNX file (and FOLDER/compressed)")
    e.add_argument("--data-dir", default=None, help="override the training run's data folder")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    e.add_argument("--int8", action="store_true",
                   help="also write NAME.int8.onnx: static int8 (onnxruntime QDQ) calibrated on training images, "
                        "with NAME.int8.json/.md (bytes, val accuracy fp32 vs int8)")
    e.add_argument("--calibration-samples", type=int, default=None,
                   help="--int8: training images to calibrate on (default: 512)")
    e.add_argument("--val-samples", type=int, default=None,
                   help="--int8: validation images to score both files on (default: 1000)")
    e.add_argument("--int8-activations", choices=["quint8", "qint8"], default=None,
                   help="--int8: activation type; quint8 = onnxruntime's fast x86 kernels (default: quint8)")
    e.set_defaults(func=cmd_export)


def _add_bench_parser(sub: Any, kw: dict[str, Any]) -> None:
    b = sub.add_parser("bench", help="measured latency of lorita folders, as ratios vs the dense source", **kw)
    b.add_argument("dirs", nargs="+", metavar="DIR", help="folders written by `lorita compress` or `lorita train`")
    b.add_argument("--batch", type=_ints, default="1,64", help="batch sizes, comma-separated")
    b.add_argument("--runtime", type=_names, default="eager", help="eager and/or onnxruntime, comma-separated")
    b.add_argument("--threads", type=int, default=1, help="intra-op threads while timing")
    b.add_argument("--channels-last", action="store_true", help="also time eager with channels_last inputs")
    b.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per setting")
    b.add_argument("--no-fold-bn", action="store_true",
                   help="time the models as stored (default: BatchNorm folded into the layer before it, as deployed)")
    b.add_argument("--out", default=None, help="folder for bench.json/bench.md (default: the one DIR)")
    b.set_defaults(func=cmd_bench)


def _given(sub: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests of the options given explicitly in ``argv`` (re-parsed with no defaults)."""
    saved = [(a, a.default) for a in sub._actions]
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        ns, _ = sub.parse_known_args(list(argv))
    finally:
        for a, d in saved:
            a.default = d
    return set(vars(ns))


def _interrupted(args: argparse.Namespace) -> str:
    if args.command == "train":
        return (f"lorita: interrupted; finished epochs are saved in {args.out} — continue with: "
                f"lorita train --out {args.out} --resume")
    return "lorita: interrupted (every output file is written whole or not at all)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error (already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    args.argv = argv  # for `train --nproc` relaunches
    if getattr(args, "subparser", None) is not None:  # `train`: which flags were given (for --resume)
        args.given = _given(args.subparser, argv[argv.index(args.command) + 1 :])
    handler = logging.StreamHandler()
    handler.setFormatter(_FlagFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    if not args.verbose:  # one line per finished epoch even without -v
        logging.getLogger("lorita.runs.train").setLevel(logging.INFO)
        logging.getLogger("lorita.runs.demo").setLevel(logging.INFO)  # its per-epoch lines when depths run in parallel
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        rc = args.func(args)
    except _USER_ERRORS as exc:
        if args.debug:
            raise
        msg = str(exc)
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            msg = f"{exc.filename}: {exc.strerror}"
            if isinstance(exc, FileExistsError | NotADirectoryError):
                msg += " (a file is in the way of an output folder; choose another --out)"
        print(f"lorita: error: {flag_message(msg)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return 130
    except Exception:
        if args.debug:
            raise
        traceback.print_exc()
        print("lorita: internal error: this is a bug in lorita, not in your input; please report it with the "
              "traceback above", file=sys.stderr)
        return 1
    logger.info("done in %.1fs", time.perf_counter() - t0)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

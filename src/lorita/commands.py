"""The CLI's command handlers: one ``cmd_*`` per ``lorita`` command (argparse lives in :mod:`lorita.cli`).

Each handler takes the parsed flags, calls the workflow of :mod:`lorita.runs` with library
arguments, and prints a short result summary (the CLI ring: the only modules that print are this
one and :mod:`lorita.cli`).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["cmd_train", "cmd_compress", "cmd_sweep", "cmd_report", "cmd_demo", "cmd_export", "cmd_bench", "config_from",
           "recipe_help"]

Args = Any  # an argparse.Namespace built by lorita.cli.build_parser

#: --search-only flags (default None in the parser) and the value used when a search leaves them out.
SEARCH_ONLY = {"tolerance": 1.0, "budget": None, "initial_step": None, "start": None, "multiple": 1,
               "criterion": "loss", "val_samples": None, "no_keep_dense": False}


def config_from(args: Args, **over: Any):
    """The :class:`~lorita.runs.config.TrainConfig` of ``lorita train`` / ``demo`` flags: with
    ``--recipe model`` (train's default), the model's recipe fills every flag not given."""
    from lorita.runs.config import TrainConfig

    d = TrainConfig()
    fields = dict(
        model=getattr(args, "model", "fcn"), model_kwargs=getattr(args, "model_kwargs", {}),
        dataset=getattr(args, "dataset", "mnist"), data_dir=args.data_dir, val_size=args.val_size,
        split_seed=args.split_seed, verify=not args.no_verify, limit_train=args.limit_train,
        depth=getattr(args, "depth", 3), target_modules=getattr(args, "target_modules", None),
        exclude_modules=getattr(args, "exclude_modules", None), init=getattr(args, "init", d.init),
        init_scale=getattr(args, "init_scale", d.init_scale), factor_side=getattr(args, "factor_side", d.factor_side),
        clip_grad_norm=getattr(args, "clip_grad_norm", d.clip_grad_norm), init_from=getattr(args, "init_from", None),
        factorize_at=getattr(args, "factorize_at", d.factorize_at),
        optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        decay=args.decay, epochs=args.epochs, batch_size=args.batch_size, scheduler=args.scheduler,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, augment=args.augment,
        seed=args.seed, device=args.device, amp=args.amp,
    )
    fields.update(over)
    if getattr(args, "given", None) is None:
        return TrainConfig(**fields)  # flags not parsed by lorita.cli.main: all of them count
    from lorita.runs.config import model_recipe

    given = set(args.given) | set(over)
    recipe = model_recipe(fields["model"])
    if getattr(args, "recipe", "none") != "model":  # the generic defaults, on the model's own dataset
        return TrainConfig(**{**fields, **({} if "dataset" in given else {"dataset": recipe.get("dataset",
                                                                                                 fields["dataset"])})})
    # the model's recipe for every flag not given (lorita.runs.config.model_recipe)
    kept = {k: v for k, v in fields.items() if k in given or (k not in recipe and k != "factorize_at")}
    return TrainConfig.for_model(fields["model"], **{k: v for k, v in kept.items() if k != "model"})


def _recipe_flag(field: str, value: Any) -> str:
    """A recipe entry as the flag that sets it (every recipe key is a flag named after its field)."""
    from fractions import Fraction

    if field == "factorize_at_fraction":
        return f"--factorize-at {Fraction(value).limit_denominator(20)} of the epochs"
    name = "--" + field.replace("_", "-")
    if isinstance(value, bool):
        return name if value else f"--no-{name[2:]}"
    return f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"


def recipe_help() -> str:
    """``--recipe``'s help: every model's recipe as flags."""
    from lorita.models import DEFAULT_CFGS

    recipes = "; ".join(f"{m}: " + ", ".join(_recipe_flag(k, v) for k, v in c["recipe"].items())
                        for m, c in sorted(DEFAULT_CFGS.items()) if c.get("recipe"))
    return (f"model = the --model's measured training recipe replaces the defaults shown below for every flag "
            f"not given ({recipes}; every model: its --dataset); none = the defaults shown, on the model's --dataset")


def _recipe_note(args: Args, cfg) -> str | None:
    """One line naming what the model's recipe set (the flags not given), or None."""
    from lorita.runs.config import model_recipe

    if getattr(args, "recipe", "none") != "model" or getattr(args, "given", None) is None or args.resume:
        return None
    recipe = model_recipe(cfg.model, cfg.dataset)  # {} on another dataset: none of it applied
    if recipe.pop("factorize_at_fraction", None) is not None:
        recipe["factorize_at"] = cfg.factorize_at
    given = set(args.given)
    used = [_recipe_flag(k, getattr(cfg, k)) for k in recipe if k not in given]
    return (f"{cfg.model} recipe: {', '.join(used)} (flags override it; --recipe none for the generic defaults)"
            if used else None)


def _resumed_config(args: Args, cfg):
    """With ``--resume``: the run's saved config, with only the flags given on this command line
    laid over it (so ``train --out RUN --resume`` needs no other flag; a differing one is named)."""
    from dataclasses import replace

    from lorita.runs.config import TrainConfig
    from lorita.runs.folder import RunFolder

    saved_path = RunFolder(args.out) / RunFolder.CONFIG
    if not saved_path.is_file():
        return cfg
    saved = TrainConfig.load(saved_path)
    given = {("verify" if d == "no_verify" else d) for d in args.given} & set(saved.to_dict())
    return replace(saved, **{k: getattr(cfg, k) for k in given})


def cmd_train(args: Args) -> int:
    from lorita import distributed
    from lorita.runs.train import train_run

    cfg = config_from(args)  # validates the flags before any process is started
    if args.resume:
        cfg = _resumed_config(args, cfg)
    note = _recipe_note(args, cfg)
    if note and not distributed.launched():
        print(note)
    if args.nproc < 1:
        raise ValueError(f"`--nproc` must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not distributed.launched():
        return distributed.relaunch(args.argv, args.nproc)
    summary = train_run(cfg, args.out, progress=not args.no_progress, resume=args.resume, overwrite=args.overwrite)
    if "val_acc" not in summary:  # a DDP rank other than 0: rank 0 reports
        return 0
    print(f"trained {cfg.model} depth {cfg.depth}: val acc {100 * summary['val_acc']:.2f}% "
          f"in {summary['wall_seconds']:.0f}s -> {args.out}")
    return 0


def _check_quantize(kind: str) -> None:
    from lorita.quantize import int8_available

    reason = int8_available()
    if reason is not None:
        raise ValueError(f"--quantize {kind} is not available here: {reason}")


def _finetune_config(args: Args):
    from lorita.finetune import DistillConfig, FinetuneConfig

    if not (args.finetune_epochs or args.distill):
        return None
    distill = DistillConfig(args.distill_temperature, args.distill_weight) if args.distill else None
    return FinetuneConfig(epochs=max(1, args.finetune_epochs), max_batches=args.finetune_batches,
                          optimizer=args.finetune_optimizer, lr=args.finetune_lr, distill=distill,
                          when=args.finetune_when)


def _search_config(args: Args):
    from lorita.ranks.search import GreedySearch, parse_budget

    v = {k: (d if getattr(args, k) is None else getattr(args, k)) for k, d in SEARCH_ONLY.items()}
    start = None
    if v["start"] is not None:
        from lorita.ranks.policies import parse_policy

        if v["start"].strip().lower().startswith("macs:"):
            raise ValueError(f"--start {v['start']}: a MAC budget cannot be a start here; "
                             f"use energy:F, global:F, params:F, ratio:F or rank:R")
        start = parse_policy(v["start"])
    return GreedySearch(tolerance=v["tolerance"], budget=None if v["budget"] is None else parse_budget(v["budget"]),
                        initial_step=v["initial_step"], multiple=v["multiple"], criterion=v["criterion"],
                        keep_dense=not v["no_keep_dense"], finetune=_finetune_config(args), seed=args.seed,
                        start=start)


def _print_rows(rep: dict[str, Any]) -> None:
    for key in ("dense", "low_rank", "int8"):
        r = rep.get(key)
        if r:
            print(f"{r['label']}: val {100 * r['val_acc']:.2f}%  test {100 * r['test_acc']:.2f}%  "
                  f"params {r['params']:,}  MACs {r['macs']:,} ({100 * r['macs_frac']:.1f}%)  {r['bytes']:,} bytes")


def cmd_compress(args: Args) -> int:
    from lorita.runs.compress import compress
    from lorita.runs.folder import RunFolder

    if args.search is not None and args.policy is not None:
        raise ValueError("give either --policy (one-shot) or --search (greedy), not both")
    if args.search is None:
        if args.policy is None:
            raise ValueError("give a rank policy (--policy energy:0.99 ...) or --search greedy --tolerance 1.0")
        stray = [k for k in SEARCH_ONLY if k != "multiple" and getattr(args, k) not in (None, False)]
        if stray:
            flags = ", ".join("--" + k.replace("_", "-") for k in stray)
            raise ValueError(f"{flags} only apply to --search greedy; drop them with --policy (or use --search)")
        if args.multiple is not None and args.multiple < 1:
            raise ValueError(f"--multiple {args.multiple}: give an int >= 1 (e.g. 8 for ONNX Runtime on AVX2)")
    if args.quantize is not None:
        _check_quantize(args.quantize)
    searching = args.search is not None
    out = args.out or str(RunFolder(args.run).default_out("search" if searching else "compress"))
    rep = compress(
        args.run, out, _search_config(args) if searching else args.policy,
        exclude_modules=args.exclude_modules, finetune=None if searching else _finetune_config(args),
        quantize=args.quantize, val_samples=args.val_samples, data_dir=args.data_dir, device=args.device,
        progress=not args.no_progress, overwrite=args.overwrite, eval_batch_size=args.eval_batch_size,
        split=args.split, latency_batch=args.latency_batch if args.latency else None,
        split_batch=args.latency_batch, multiple=1 if searching or args.multiple is None else args.multiple,
    )
    _print_rows(rep)
    if "latency" in rep:
        lat = rep["latency"]
        print(f"latency ratio (dense/low-rank, eager, 1 thread, batch {lat['batch']}): {lat['speedup']:.2f}")
    what = f"search: {rep['search']['stop_reason']}" if searching else f"policy {args.policy}"
    print(f"{what} -> {out} (report.md)")
    return 0


def cmd_sweep(args: Args) -> int:
    from lorita.runs.folder import RunFolder
    from lorita.runs.sweep import sweep_run

    cap = args.layer_cap
    if cap is not None and (args.policy not in ("params", "macs") or not 0 < cap <= 1):
        raise ValueError(f"--layer-cap {cap:g}: give a number in (0, 1] with --policy params or macs "
                         f"(got --policy {args.policy})")
    out = args.out or str(RunFolder(args.run).default_out("sweep", args.policy))
    res = sweep_run(args.run, args.policy, args.points, out, data_dir=args.data_dir,
                    progress=not args.no_progress, search_tolerances=args.search_tolerances, device=args.device,
                    eval_batch_size=args.eval_batch_size,
                    latency_batch=args.latency_batch if args.latency else None, multiple=args.multiple,
                    exclude_modules=args.exclude_modules, layer_cap=args.layer_cap)
    print((Path(out) / RunFolder.SWEEP_MD).read_text())
    print(f"-> {out}/sweep.json, sweep.md, sweep.png ({len(res['points'])} points)")
    return 0


def cmd_report(args: Args) -> int:
    from lorita.runs.report import report_runs

    path = report_runs(args.runs, args.out, data_dir=args.data_dir, labels=args.labels, device=args.device,
                       progress=not args.no_progress, eval_batch_size=args.eval_batch_size)
    print(f"-> {path}")
    return 0


def cmd_demo(args: Args) -> int:
    from lorita.runs.demo import run_demo

    cfg = config_from(args, model="fcn", dataset="mnist", depth=1)
    threads = args.threads or 1
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: expected an integer >= 1 (1 trains the depths one after the other)")
    jobs = args.jobs if args.jobs is not None else max(1, min(len(args.depths), usable_cpus() // threads))
    print(run_demo(cfg, args.out, depths=tuple(args.depths), budgets=args.budgets, progress=not args.no_progress,
                   jobs=jobs, threads=threads))
    return 0


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cmd_export(args: Args) -> int:
    from lorita.export import ONNX_ATOL, ONNX_RTOL
    from lorita.runs.export import export_dir

    # torch.onnx warns about optional torchvision ops it skips and its own internal deprecations;
    # neither is actionable here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    int8_only = {"calibration_samples": 512, "val_samples": 1000, "int8_activations": "quint8"}
    given = [k for k in int8_only if getattr(args, k) is not None]
    if given and not args.int8:
        raise ValueError(f"--{given[0].replace('_', '-')} applies to int8 export; add --int8 (or drop it)")
    if args.int8:
        for k, v in int8_only.items():
            setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
        return _export_int8(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path, diff, shape = export_dir(args.dir, args.onnx, form=args.form, policy=args.policy,
                                       data_dir=args.data_dir, overwrite=args.overwrite)
    tol = f"{ONNX_ATOL:g} + {ONNX_RTOL:g}·|y|"
    check = "" if diff is None else f" (onnxruntime vs PyTorch: max |diff| {diff:.2g} <= {tol})"
    dims = ", ".join(str(d) for d in shape)
    print(f"exported {args.form} model -> {path}{check}\ninput: float32 (N, {dims}), normalized as in training; "
          f"output: (N, classes) logits")
    return 0


def _export_int8(args: Args) -> int:
    from lorita.runs.export import export_int8_dir, int8_paths

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        s = export_int8_dir(args.dir, args.onnx, form=args.form, policy=args.policy, data_dir=args.data_dir,
                            calibration_samples=args.calibration_samples, val_samples=args.val_samples,
                            activations=args.int8_activations, overwrite=args.overwrite)
    f, q = s["fp32"], s["int8"]
    md = int8_paths(args.onnx)["md"]
    print(f"exported {args.form} model -> {f['path']} (fp32, {f['bytes']:,} bytes, val acc {100 * f['val_acc']:.2f}% "
          f"on the first {s['val_samples']} validation images)\n"
          f"int8 (calibrated on {s['calibration_samples']} training images) -> {q['path']} ({q['bytes']:,} bytes, "
          f"{100 * q['bytes'] / f['bytes']:.1f}% of fp32, val acc {100 * q['val_acc']:.2f}%)\n"
          f"top-1 agreement on {s['val_samples']} validation images: {100 * s['agreement']:.2f}%; summary -> {md}")
    return 0


def cmd_bench(args: Args) -> int:
    from lorita.runs.bench import BENCH_JSON, BENCH_MD, bench_dirs

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    if args.rounds < 1:
        raise ValueError(f"`--rounds` must be >= 1, got {args.rounds}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        res = bench_dirs(args.dirs, batches=args.batch, runtimes=args.runtime, threads=args.threads,
                         channels_last=args.channels_last, rounds=args.rounds, out_dir=args.out,
                         fold_bn=not args.no_fold_bn)
    print((Path(res["out"]) / BENCH_MD).read_text())
    print(f"-> {res['out']}/{BENCH_JSON}, {BENCH_MD}")
    return 0

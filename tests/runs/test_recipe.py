"""Per-model training recipes (``DEFAULT_CFG["recipe"]``): `lorita train --model M` takes M's measured
defaults for every flag not given; explicit flags win; `--recipe none` keeps the generic defaults."""

from __future__ import annotations

import pytest

from lorita.cli import _given, build_parser, main
from lorita.commands import _recipe_note, config_from
from lorita.runs.config import TrainConfig, model_recipe


def _cfg(*flags: str):
    argv = ["train", "--out", "x", *flags]
    args = build_parser().parse_args(argv)
    args.given = _given(args.subparser, argv[1:])  # as lorita.cli.main does
    return args, config_from(args)


def test_fcn_recipe_is_the_generic_defaults():
    assert model_recipe("fcn") == {"dataset": "mnist"}
    assert TrainConfig.for_model("fcn") == TrainConfig()
    assert _cfg()[1] == TrainConfig()
    assert _recipe_note(*_cfg()) is None or "--dataset mnist" in _recipe_note(*_cfg())


def test_resnet20_recipe_values_and_factorize_fraction():
    cfg = TrainConfig.for_model("resnet20")
    assert (cfg.dataset, cfg.depth, cfg.factorize_at, cfg.epochs) == ("cifar10", 2, 5, 15)
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay) == ("sgd", 0.05, 0.9, 4e-3)
    assert (cfg.warmup_epochs, cfg.label_smoothing, cfg.augment) == (1.0, 0.1, True)
    # factorize_at = round(epochs / 3), below epochs
    assert [TrainConfig.for_model("resnet20", epochs=e).factorize_at for e in (1, 2, 3, 4, 30)] == [0, 1, 1, 1, 10]


@pytest.mark.parametrize("field", [dict(depth=1), dict(init="default"), dict(init_from="run"), dict(factorize_at=0)])
def test_recipe_does_not_factorize_late_where_it_cannot_or_was_told_not_to(field):
    assert TrainConfig.for_model("resnet20", **field).factorize_at == 0


def test_given_fields_win_over_the_recipe():
    cfg = TrainConfig.for_model("vit", depth=2, lr=3e-4, factorize_at=7, augment=False)
    assert (cfg.depth, cfg.lr, cfg.factorize_at, cfg.augment, cfg.optimizer, cfg.weight_decay) == (
        2, 3e-4, 7, False, "adamw", 0.05)
    with pytest.raises(ValueError, match="`lr` must be > 0"):
        TrainConfig.for_model("resnet20", lr=-1.0)
    for bad in (dict(depth="2"), dict(epochs=0)):  # the dataclass names the field, not a TypeError here
        with pytest.raises(ValueError, match=f"`{next(iter(bad))}` must be an int"):
            TrainConfig.for_model("resnet20", **bad)


def test_cli_applies_the_recipe_only_to_flags_not_given():
    args, cfg = _cfg("--model", "resnet20", "--depth", "3", "--epochs", "9", "--no-augment")
    assert (cfg.dataset, cfg.depth, cfg.epochs, cfg.factorize_at, cfg.augment, cfg.weight_decay) == (
        "cifar10", 3, 9, 3, False, 4e-3)
    note = _recipe_note(args, cfg)
    assert note.startswith("resnet20 recipe: --dataset cifar10, --optimizer sgd") and "--factorize-at 3" in note
    assert "--depth" not in note and "--epochs" not in note and "augment" not in note
    _, cfg = _cfg("--model", "vit", "--factorize-at", "0", "--weight-decay", "0.1")
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.factorize_at, cfg.depth) == ("adamw", 1e-3, 0.1, 0, 3)


def test_recipe_none_keeps_the_generic_defaults():
    args, cfg = _cfg("--model", "resnet20", "--recipe", "none")  # still the model's own dataset
    assert cfg == TrainConfig(model="resnet20", dataset="cifar10")
    assert _recipe_note(args, cfg) is None
    assert _cfg("--model", "resnet20", "--recipe", "none", "--dataset", "mnist")[1].dataset == "mnist"


def test_help_lists_the_recipes(capsys):
    assert main(["train", "--help"]) == 0
    out = "".join(capsys.readouterr().out.split())  # argparse wraps lines (also at hyphens)
    assert "resnet20:--depth2,--factorize-at1/3oftheepochs,--optimizersgd" in out and "vit:--depth3" in out


def test_recipe_is_for_its_own_dataset_only():
    assert TrainConfig.for_model("resnet20", dataset="mnist") == TrainConfig(model="resnet20", dataset="mnist")
    args, cfg = _cfg("--model", "vit", "--dataset", "mnist")
    assert cfg == TrainConfig(model="vit", dataset="mnist") and _recipe_note(args, cfg) is None


def _bench(name: str):
    """A benchmark script as a module (benchmarks/ on sys.path, as when it runs)."""
    import importlib
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(root))


def test_recipes_are_the_runs_the_readme_measured():
    """Each recipe equals the config of the benchmark runs behind its README numbers (data paths and
    the CPU-sized subset aside), so the defaults are what was measured."""
    import json
    from pathlib import Path

    late = _bench("late_wd")  # the ResNet-20 recipe rows: `--factorize-at 5 --depth 2` at wd 4e-3 (seeds 0, 1)
    res = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    for seed in (0, 1):
        measured = late.config(seed, 0.004, 2)
        assert json.loads((res / f"late_wd0.004_s{seed}.json").read_text())["weight_decay"] == 0.004
        assert TrainConfig.for_model("resnet20", data_dir=measured.data_dir, limit_train=late.LIMIT,
                                     seed=seed) == measured
    delayed = _bench("delayed_factorize")  # the same schedule at wd 2e-3 (3 seeds): only the weight decay differs
    at_2e3 = TrainConfig(**{**delayed.FAM["cfg"], "limit_train": delayed.LIMIT, "weight_decay": delayed.WD,
                            "depth": 2, "epochs": delayed.TOTAL, "factorize_at": 5})
    assert at_2e3 == late.config(0, delayed.WD, 2)
    for name in ("fronts_vit_cpu_factorize_at5.json", "fronts_vit_cpu_factorize_at5_s1.json"):
        cfg = json.loads((res / name).read_text())["config"]
        run = {**cfg, "weight_decay": json.loads((res / name).read_text())["runs"][0]["weight_decay"]}
        assert TrainConfig.for_model("vit", **{k: cfg[k] for k in ("data_dir", "limit_train", "model_kwargs",
                                                                  "seed")}) == TrainConfig.from_dict(run)

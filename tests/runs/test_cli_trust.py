"""CLI trust fixes (issue 12 items 2, 4, 6): one-line errors, nothing left behind, no silent overwrite,
flags named in messages, --help with choices and defaults."""

import json

import pytest
import torch

from deploy_fixtures import fake_mnist, train_args, trained_run  # noqa: F401
from lorita import cli
from lorita.cli import flag_message, main


@pytest.mark.parametrize(
    ("msg", "want"),
    [
        ("pass `data_dir` pointing at X", "pass --data-dir pointing at X"),
        ("pass `overwrite=True` to replace it", "pass --overwrite to replace it"),
        ("pass `verify=False` for other IDX data", "pass --no-verify for other IDX data"),
        ("use `device='cpu'`", "use --device cpu"),
        ("`unknown_param` stays", "`unknown_param` stays"),
    ],
)
def test_flag_message(msg, want):
    assert flag_message(msg) == want


def test_wrong_model_for_dataset_is_one_line_and_leaves_nothing(fake_mnist, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "r20"
    argv = [*train_args(fake_mnist, out), "--model", "resnet20", "--dataset", "mnist"]
    argv[argv.index("--model-kwargs") + 1] = '{"width": 2}'
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lorita: error: model 'resnet20' is built for cifar10 inputs (3, 32, 32) and mnist gives "
                   "(1, 28, 28): pass --model-kwargs '{\"in_channels\": 1}' to adapt it, or choose a model "
                   "built for mnist (fcn)"], err
    assert not out.exists()  # no config.json left to block a rerun
    # The suggested fix works as printed.
    argv[argv.index("--model-kwargs") + 1] = '{"width": 2, "in_channels": 1}'
    assert main(argv) == 0 and (out / "summary.json").is_file()


@pytest.mark.parametrize(
    ("model", "kwargs", "fix"),
    [
        ("vit", {"dim": 16, "num_layers": 1, "heads": 2, "dim_head": 8, "mlp_dim": 16},
         {"in_channels": 1, "image_size": 28}),
        ("vit", {"dim": 16, "num_layers": 1, "heads": 2, "dim_head": 8, "mlp_dim": 16, "in_channels": 1},
         {"image_size": 28}),
        ("vgg16", {"width_mult": 0.125}, None),  # 28 px cannot take five 2x pools: no kwargs fix it
    ],
)
def test_mismatch_names_the_kwargs_that_adapt_the_model(fake_mnist, tmp_path, model, kwargs, fix):  # noqa: F811
    from lorita.runs.config import TrainConfig
    from lorita.runs.train import train_run

    cfg = TrainConfig(model=model, dataset="mnist", data_dir=str(fake_mnist), verify=False, model_kwargs=kwargs,
                      epochs=1, limit_train=64, val_size=32, batch_size=32, depth=1)
    with pytest.raises(ValueError) as got:
        train_run(cfg, tmp_path / "bad", progress=False)
    msg = str(got.value)
    assert msg.startswith(f"model {model!r} is built for cifar10 inputs (3, 32, 32) and mnist gives (1, 28, 28)")
    assert msg.endswith("choose a model built for mnist (fcn)")
    if fix is None:
        assert "model_kwargs" not in msg
        return
    assert f"pass `model_kwargs` '{json.dumps(fix)}' to adapt it" in msg
    cfg = TrainConfig(**{**cfg.to_dict(), "model_kwargs": {**kwargs, **fix}})
    assert train_run(cfg, tmp_path / "ok", progress=False)["val_acc"] >= 0.0


def test_corrupt_resume_checkpoint_is_one_line(fake_mnist, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert main(train_args(fake_mnist, out)) == 0
    (out / "summary.json").unlink()
    (out / "resume.pt").write_bytes(b"PK\x03\x04 not a zip")
    assert main([*train_args(fake_mnist, out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out / 'resume.pt'} is not a readable lorita checkpoint" in err[0], err


def test_compress_a_file_inside_the_run_names_the_folder(trained_run, capsys):  # noqa: F811
    assert main(["compress", str(trained_run / "model.safetensors"), "--policy", "energy:0.9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"lorita: error: {trained_run / 'model.safetensors'} is a file; pass the run folder that holds "
                   f"it ({trained_run}), written by `lorita train`")


def test_export_refuses_to_overwrite_without_asking(trained_run, fake_mnist, tmp_path, capsys):  # noqa: F811
    onnx = tmp_path / "m.onnx"
    argv = ["export", str(trained_run), "--onnx", str(onnx), "--form", "dense", "--data-dir", str(fake_mnist)]
    assert main(argv) == 0
    assert "input: float32 (N, 1, 28, 28)" in capsys.readouterr().out  # the expected input is printed
    before = onnx.read_bytes()
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"lorita: error: {onnx} already exists; pass --overwrite to replace it, or choose another path")
    assert onnx.read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0


def test_help_lists_choices_and_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "{fcn,resnet18,resnet20,vgg16,vit}" in text and "{cifar10,mnist}" in text
    assert "(default: fcn)" in text and "(default: mnist)" in text and "(default: 0.05)" in text


def test_a_bug_in_lorita_is_not_dressed_up_as_a_user_error(monkeypatch, trained_run, capsys):  # noqa: F811
    def broken(*a, **k):
        raise KeyError("internal")

    monkeypatch.setattr("lorita.runs.compress.compress", broken)
    assert main(["compress", str(trained_run), "--policy", "energy:0.9"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "this is a bug in lorita" in err


def test_finished_run_keeps_no_resume_checkpoint_and_resume_is_a_no_op(trained_run, fake_mnist, capsys):  # noqa: F811
    assert not (trained_run / "resume.pt").exists()
    before = (trained_run / "model.safetensors").read_bytes()
    assert main([*train_args(fake_mnist, trained_run), "--resume"]) == 0
    assert (trained_run / "model.safetensors").read_bytes() == before
    assert json.loads((trained_run / "summary.json").read_text())["epochs"] >= 1
    assert torch.__version__  # the run above used the real training path


def test_user_errors_are_value_os_and_floating_point_errors_only():
    assert cli._USER_ERRORS == (ValueError, OSError, FloatingPointError)


def test_report_never_mixes_a_stale_sweep_with_a_fresh_one(trained_run, fake_mnist, tmp_path, capsys):  # noqa: F811
    from lorita.runs.sweep import DEFAULT_POINTS

    assert main(["--no-progress", "sweep", str(trained_run), "--policy", "params", "--points", "0.1,0.5",
                 "--data-dir", str(fake_mnist)]) == 0
    assert main(["--no-progress", "report", str(trained_run), "--out", str(tmp_path / "rep"),
                 "--data-dir", str(fake_mnist)]) == 0
    sweep = json.loads((trained_run / "sweep-params" / "sweep.json").read_text())
    assert sweep["requested_points"] == DEFAULT_POINTS["params"]  # recomputed at the report's points
    reached = {r["point"] for r in sweep["points"]}
    assert {0.1, 0.5} <= reached and len(reached) > 2
    table = (tmp_path / "rep" / "report.md").read_text().split("## Accuracy vs weight params kept")[1]
    rows = [ln for ln in table.split("![")[0].splitlines() if ln.startswith("| ") and "test %" not in ln]
    assert len(rows) == 1 + len(reached)  # dense + every reached point of the one consistent sweep
    stamp = (trained_run / "sweep-params" / "sweep.json").stat().st_mtime_ns
    assert main(["--no-progress", "report", str(trained_run), "--out", str(tmp_path / "rep2"),
                 "--data-dir", str(fake_mnist)]) == 0
    assert (trained_run / "sweep-params" / "sweep.json").stat().st_mtime_ns == stamp  # matching sweep reused

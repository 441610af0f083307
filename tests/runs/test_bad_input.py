"""Bad input, everywhere: each case gives one line naming the thing and the fix; the CLI exits
non-zero without a traceback and leaves no (half-written) file; the model is untouched."""

from __future__ import annotations

import gzip
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lorita
from deploy_fixtures import (  # noqa: F401
    TinyNet,
    assert_same_state,
    fake_mnist,
    make_fake_mnist,
    state_copy,
    tiny_input,
    train_args,
    trained_run,
    write_idx,
)
from lorita.cli import main
from lorita.data import TensorLoader

# ---- CLI ----------------------------------------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _truncated_data(tmp: Path, data: Path) -> Path:
    bad = tmp / "cut_data"
    shutil.copytree(data, bad)
    raw = (bad / "train-images-idx3-ubyte.gz").read_bytes()
    (bad / "train-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])
    return bad


def _wrong_layout(tmp: Path, data: Path) -> Path:
    bad = tmp / "layout_data"
    shutil.copytree(data, bad)
    write_idx(bad / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))  # 7 labels for 160 images
    return bad


def _flat_images(tmp: Path, data: Path) -> Path:
    bad = tmp / "flat_data"
    shutil.copytree(data, bad)
    write_idx(bad / "train-images-idx3-ubyte.gz", np.zeros((160, 784), dtype=np.uint8))  # (N, 784), not (N, H, W)
    return bad


def _not_idx(tmp: Path, data: Path) -> Path:
    bad = tmp / "png_data"
    shutil.copytree(data, bad)
    with gzip.open(bad / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return bad


def _run_copy(tmp: Path, run: Path, edit) -> Path:
    bad = tmp / "run_copy"
    shutil.copytree(run, bad, ignore=shutil.ignore_patterns("compressed*"))
    edit(bad)
    return bad


def _cut_model(run: Path) -> None:
    raw = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(raw[:100])


def _no_config(run: Path) -> None:
    (run / "config.json").unlink()


def _bad_config(run: Path) -> None:
    (run / "config.json").write_text("{not json")


def _typo_config(run: Path) -> None:
    (run / "config.json").write_text((run / "config.json").read_text().replace('"depth"', '"dept"'))


def _other_width(run: Path) -> None:
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text.replace('"hidden": [\n      16\n    ]', '"hidden": [\n      32\n    ]'))


# (id, argv builder(tmp, data, run, out), regex the single error line must match)
CLI_CASES = [
    ("data_dir_missing", lambda t, d, r, o: train_args(t / "nope", o),
     r"MNIST folder .*nope does not exist.*--data-dir"),
    ("data_truncated", lambda t, d, r, o: train_args(_truncated_data(t, d), o),
     r"cannot read .*train-images-idx3-ubyte\.gz.*Replace the file"),
    ("data_wrong_layout", lambda t, d, r, o: train_args(_wrong_layout(t, d), o),
     r"train images \(160, 28, 28\) and labels \(7,\) do not form an MNIST-style split"),
    ("data_flat_images", lambda t, d, r, o: train_args(_flat_images(t, d), o),
     r"train images \(160, 784\) .*do not form an MNIST-style split"),
    ("data_not_idx", lambda t, d, r, o: train_args(_not_idx(t, d), o), r"not an IDX file \(bad magic number"),
    ("depth_0", lambda t, d, r, o: [*train_args(d, o), "--depth", "0"], r"--depth must be an int >= 1, got 0"),
    ("batch_0", lambda t, d, r, o: [*train_args(d, o), "--batch-size", "0"], r"--batch-size must be >= 1, got 0"),
    ("lr_negative", lambda t, d, r, o: [*train_args(d, o), "--lr", "-1"], r"--lr must be > 0, got -1"),
    ("weight_decay_negative", lambda t, d, r, o: [*train_args(d, o), "--weight-decay", "-0.1"],
     r"--weight-decay must be >= 0"),
    ("target_no_match", lambda t, d, r, o: [*train_args(d, o), "--target-modules", "conv.*"],
     r"no factorizable layers .*matched target_modules='conv\.\*'.*Candidates: \[layers\.0, layers\.2\]"
     r".*Fix --target-modules"),
    ("target_bad_regex", lambda t, d, r, o: [*train_args(d, o), "--target-modules", "layers.(["],
     r"--target-modules='layers\.\(\[' is not a valid regular expression"),
    ("model_unknown", lambda t, d, r, o: [*train_args(d, o), "--model", "resnet9000"], r"invalid choice: 'resnet9000'"),
    ("model_kwargs_bad", lambda t, d, r, o: [*train_args(d, o), "--model-kwargs", '{"widths": [3]}'],
     r"model 'fcn' rejects model_kwargs .*widths.*see lorita\.models\.FCN"),
    ("nproc_0", lambda t, d, r, o: [*train_args(d, o), "--nproc", "0"], r"`--nproc` must be >= 1, got 0"),
    ("out_is_a_file", lambda t, d, r, o: train_args(d, _a_file(t)), r"afile"),
    ("run_missing", lambda t, d, r, o: ["compress", str(t / "norun"), "--policy", "energy:0.9", "--out", str(o)],
     r"run folder .*norun does not exist; pass a folder written by `lorita train`"),
    ("run_checkpoint_truncated", lambda t, d, r, o: ["compress", str(_run_copy(t, r, _cut_model)), "--policy",
                                                     "rank:2", "--out", str(o), "--data-dir", str(d)],
     r"model\.safetensors is not a readable safetensors file .*truncated or corrupt"),
    ("run_no_config", lambda t, d, r, o: ["compress", str(_run_copy(t, r, _no_config)), "--policy", "rank:2",
                                          "--out", str(o)],
     r"no config at .*config\.json; is this a folder written by"),
    ("run_config_not_json", lambda t, d, r, o: ["compress", str(_run_copy(t, r, _bad_config)), "--policy", "rank:2",
                                                "--out", str(o)], r"config\.json is not valid JSON"),
    ("run_config_typo", lambda t, d, r, o: ["compress", str(_run_copy(t, r, _typo_config)), "--policy", "rank:2",
                                            "--out", str(o)], r"unknown config keys \['dept'\]"),
    ("run_config_other_width", lambda t, d, r, o: ["compress", str(_run_copy(t, r, _other_width)), "--policy",
                                                   "rank:2", "--out", str(o), "--data-dir", str(d)],
     r"model\.safetensors: layer `layers\.0`: `layers\.0\.bias` has shape \(16,\) in the file but "
     r"\(32,\) in FCN \(the manifest says `layers\.0` is FactorizedLinear depth 2\); build the model with"),
]
POLICIES = [
    ("energy", r"invalid policy 'energy'; expected kind:value"),
    ("energy:1.5", r"--policy value must be in \(0, 1\], got 1\.5"),
    ("energy:0", r"--policy value must be in \(0, 1\], got 0"),
    ("params:0", r"--policy value must be in \(0, 1\], got 0"),
    ("macs:1.01", r"--policy value must be in \(0, 1\], got 1\.01"),
    ("ratio:-0.1", r"--policy value must be in \(0, 1\]"),
    ("rank:0", r"`rank` must be an int >= 1, got 0"),
    ("rank:2.5", r"invalid value '2\.5' in policy 'rank:2\.5'"),
    ("bogus:1", r"unknown policy kind 'bogus'"),
    ("global:2", r"--policy value must be in \[0, 1\]"),
]
CLI_CASES += [
    (f"policy_{p}", lambda t, d, r, o, p=p: ["compress", str(r), "--policy", p, "--out", str(o), "--data-dir", str(d)],
     msg)
    for p, msg in POLICIES
]
CLI_CASES += [
    ("policy_missing", lambda t, d, r, o: ["compress", str(r), "--out", str(o), "--data-dir", str(d)],
     r"give a rank policy \(--policy energy:0\.99 \.\.\.\) or --search greedy"),
    ("export_missing", lambda t, d, r, o: ["export", str(t / "nope"), "--onnx", str(o / "m.onnx")],
     r"nope is not a folder; pass a folder written by `lorita compress`"),
    ("export_train_run_no_policy", lambda t, d, r, o: ["export", str(r), "--onnx", str(o / "m.onnx")],
     r"is a training run: give --policy"),
    ("export_onnx_is_dir", lambda t, d, r, o: ["export", str(r), "--onnx", str(t), "--form", "dense",
                                               "--data-dir", str(d)], r"is a directory; give a file path"),
]


def _a_file(tmp: Path) -> Path:
    p = tmp / "afile"
    p.write_text("not a folder")
    return p


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_one_line_nonzero_no_files(case, tmp_path, fake_mnist, trained_run, capsys):  # noqa: F811
    _, build, pattern = case
    out = tmp_path / "out"
    argv = build(tmp_path, fake_mnist, trained_run, out)
    before = sorted(p.name for p in trained_run.rglob("*"))
    capsys.readouterr()
    rc = main(argv)  # a traceback would surface here as an exception
    err = capsys.readouterr().err.strip()
    assert rc != 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorita: error: "), err
    assert __import__("re").search(pattern, lines[0]), lines[0]
    assert _files(out) == []  # nothing written, not even half
    assert sorted(p.name for p in trained_run.rglob("*")) == before  # the inputs are untouched


def test_argparse_errors_are_one_line_exit_2(capsys):
    cases = {
        ("train",): "the following arguments are required: --out",
        ("compress",): "the following arguments are required: run",
        ("export", "d", "--onnx", "x", "--form", "sparse"): "invalid choice: 'sparse'",
        ("sweep", "r", "--points", "a,b"): "expected numbers separated by commas",
        ("nonsense",): "invalid choice: 'nonsense'",
        ("train", "--out", "x", "--model-kwargs", "{bad"): "argument --model-kwargs: not valid JSON",
    }
    for argv, why in cases.items():
        assert main(list(argv)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lorita: error: "), lines  # no usage block
        assert why in lines[0] and "(see lorita" in lines[0], lines[0]


def test_real_entry_point_prints_one_line_and_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "lorita", "compress", str(tmp_path / "missing"), "--policy",
                          "energy:0.9"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"lorita: error: run folder {tmp_path / 'missing'} does not exist; pass a folder written by `lorita train`"
    ]


# ---- public API ---------------------------------------------------------------------------------------


def _fact():
    return lorita.factorize(TinyNet(), depth=2)


API_CASES = [
    ("depth_0", lambda m: lorita.factorize(m, depth=0, inplace=True), ValueError,
     r"`depth` must be an int >= 1, got 0"),
    ("depth_float", lambda m: lorita.factorize(m, depth=2.5, inplace=True), ValueError, r"got 2\.5"),
    ("depth_bool", lambda m: lorita.factorize(m, depth=True, inplace=True), ValueError, r"got True"),
    ("init_bad", lambda m: lorita.factorize(m, init="orthogonal", inplace=True), ValueError, r"`init` must be"),
    ("mode_bad", lambda m: lorita.factorize(m, forward_mode="fast", inplace=True), ValueError, r"`forward_mode` must"),
    ("target_no_match", lambda m: lorita.factorize(m, target_modules="decoder.*", inplace=True), ValueError,
     r"no factorizable layers .*matched target_modules='decoder\.\*'"
     r".*Candidates: \[conv, conv1d, attn, attn\.out_proj, fc\]"),
    ("target_list_no_match", lambda m: lorita.factorize(m, target_modules=["head"], inplace=True), ValueError,
     r"no factorizable layers .*matched target_modules=\['head'\]"),
    ("target_bad_regex", lambda m: lorita.factorize(m, target_modules="(", inplace=True), ValueError,
     r"not a valid regular expression"),
    ("target_wrong_type", lambda m: lorita.factorize(m, target_modules=5, inplace=True), TypeError,
     r"`target_modules` must be None, a regex str or a list of names"),
    ("exclude_all", lambda m: lorita.factorize(m, exclude_modules=".*", inplace=True), ValueError,
     r"no factorizable layers .*matched"),
    ("not_a_module", lambda m: lorita.factorize({"w": 1}), TypeError, r"expected a torch\.nn\.Module, got dict"),
    ("rank_0", lambda m: lorita.truncate(m, {"fc": 0}, inplace=True), ValueError,
     r"`fc`: rank 0 is outside \[1, min\(out, in·k·k\)=3\]"),
    ("rank_too_big", lambda m: lorita.to_low_rank(m, {"conv": 7}, inplace=True), ValueError,
     r"`conv`: rank 7 is outside \[1, min\(out, in·k·k\)=6\]"),
    ("rank_float", lambda m: lorita.truncate(m, {"fc": 2.0}, inplace=True), TypeError, r"`fc`: rank must be an int"),
    ("rank_unknown_layer", lambda m: lorita.truncate(m, {"fc2": 1}, inplace=True), ValueError,
     r"`fc2` in `ranks` is not a module of the model"),
    ("rank_attention_module", lambda m: lorita.truncate(m, {"attn": 1}, inplace=True), ValueError,
     r"give ranks for `attn\.in_proj` and `attn\.out_proj`"),
    ("ranks_empty", lambda m: lorita.truncate(m, {}, inplace=True), ValueError, r"`ranks` is empty"),
    ("ranks_list", lambda m: lorita.to_low_rank(m, [("fc", 1)], inplace=True), TypeError, r"`ranks` must be a dict"),
    ("policy_string_bad", lambda m: lorita.select_ranks(m, "energy:2"), ValueError, r"`energy` must be in \(0, 1\]"),
    ("policy_type_bad", lambda m: lorita.select_ranks(m, 0.9), TypeError, r"unknown rank policy 0\.9"),
    ("macs_without_inputs", lambda m: lorita.select_ranks(m, "macs:0.5"), ValueError,
     r"MacBudget needs `example_inputs`"),
    ("budget_0", lambda m: lorita.ParamBudget(0.0), ValueError, r"`fraction` must be in \(0, 1\], got 0\.0"),
    ("budget_above_1", lambda m: lorita.MacBudget(1.5, tiny_input()), ValueError, r"got 1\.5"),
    ("budget_nan", lambda m: lorita.ParamBudget(math.nan), TypeError, r"`fraction` must be a number, got nan"),
    ("energy_neg", lambda m: lorita.EnergyThreshold(-0.1), ValueError, r"`energy` must be in \(0, 1\]"),
    ("budget_infeasible", lambda m: lorita.select_ranks(m, lorita.ParamBudget(0.001)), ValueError,
     r"budget 0\.001 cannot be met: even rank 1 .*raise the budget or target more layers"),
    ("macs_wrong_input", lambda m: lorita.count_macs(m, torch.randn(2, 3)), ValueError,
     r"count_macs: the model failed on `example_inputs`"),
    ("load_not_module", lambda m: lorita.load("model", "x.safetensors"), TypeError, r"must be a torch\.nn\.Module"),
    ("save_not_module", lambda m: lorita.save(m.state_dict(), "x.safetensors"), TypeError,
     r"must be a torch\.nn\.Module"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_raises_named_error_and_leaves_model_untouched(case):
    _, call, exc, pattern = case
    model = TinyNet()
    before = state_copy(model)
    types = [type(m) for m in model.modules()]
    with pytest.raises(exc, match=pattern) as info:
        call(model)
    assert "\n" not in str(info.value)
    assert_same_state(model, before)
    assert [type(m) for m in model.modules()] == types


def test_truncating_a_factorized_model_says_merge_first():
    fact = _fact()
    before = state_copy(fact)
    with pytest.raises(TypeError, match=r"`fc` is still factorized; call lorita\.merge\(model\) before truncating"):
        lorita.truncate(fact, {"fc": 1}, inplace=True)
    with pytest.raises(TypeError, match=r"`attn\.in_proj` is still factorized"):
        lorita.to_low_rank(fact, {"attn.in_proj": 1}, inplace=True)
    assert_same_state(fact, before)


def test_factorizing_twice_is_refused_naming_the_factorized_layers():
    fact = _fact()
    before = state_copy(fact)
    with pytest.raises(ValueError, match=r"no factorizable layers .*Skipped: \{'conv': 'already factorized"):
        lorita.factorize(fact, depth=2, inplace=True)
    assert_same_state(fact, before)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(batch_size=0), r"`batch_size` must be >= 1, got 0"),
        (dict(y=torch.zeros(3, dtype=torch.long)), r"x has 4 rows but y has 3"),
        (dict(rank=2, world_size=2), r"`rank` must be in \[0, 2\), got 2"),
    ],
    ids=["batch_0", "rows_mismatch", "rank_outside_world"],
)
def test_loader_rejects_wrong_layouts(kwargs, pattern):
    args = dict(x=torch.zeros(4, 1, 2, 2), y=torch.zeros(4, dtype=torch.long), batch_size=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        TensorLoader(**args)


def test_layer_classes_reject_bad_depth_and_rank():
    with pytest.raises(ValueError, match=r"`depth` must be an int >= 1, got 0"):
        lorita.FactorizedLinear(3, 2, depth=0)
    with pytest.raises(ValueError, match=r"`rank` must be an int >= 1, got 0"):
        lorita.LowRankConv2d(3, 2, 3, 0)
    with pytest.raises(ValueError, match=r"`lin`: rank 3 is outside"):
        lorita.LowRankLinear.from_dense(nn.Linear(2, 2), 3, name="lin")

"""CLI smoke tests on a small slice of the bundled MNIST, and one-line errors without tracebacks."""

import json
import subprocess
import sys

import pytest
import torch

import lorita
from lorita.cli import main
from lorita.models import FCN

SMALL = ["--limit-train", "1500", "--val-size", "500", "--epochs", "1", "--batch-size", "100"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "d3"
    rc = main(["--no-progress", "train", "--depth", "3", "--model-kwargs", '{"hidden": [64, 64]}',
               "--optimizer", "adam", "--lr", "0.003", *SMALL, "--out", str(out)])
    assert rc == 0
    return out


def test_train_writes_checkpoint_config_metrics(trained):
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["depth"] == 3 and cfg["model_kwargs"] == {"hidden": [64, 64]}
    rows = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and {"train_loss", "train_acc", "val_acc", "val_loss"} <= set(rows[0])
    assert rows[0]["val_acc"] > 0.5  # 1 epoch on 1,500 digits: well above chance (0.1)
    man = lorita.read_manifest(trained / "model.safetensors")
    assert man["layers"]["layers.0"] == {"form": "factorized", "kind": "FactorizedLinear", "depth": 3,
                                        "factor_side": "output"}  # --factor-side auto: 784 -> 64


def test_compress_outputs_and_merged_loads_into_plain_class(trained, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["--no-progress", "compress", str(trained), "--policy", "energy:0.9", "--out", str(out)]) == 0
    for f in ("merged.safetensors", "low_rank.safetensors", "ranks.json", "report.json", "report.md"):
        assert (out / f).is_file(), f
    report = json.loads((out / "report.json").read_text())
    ranks = json.loads((out / "ranks.json").read_text())
    assert set(ranks) == {"layers.0", "layers.2", "layers.4"}
    assert report["low_rank"]["weight_params"] < report["dense"]["weight_params"]
    # merged weights load strictly into the unmodified model class
    plain = lorita.load(FCN(hidden=(64, 64)), out / "merged.safetensors")
    assert all(type(m) is not lorita.FactorizedLinear for m in plain.modules())
    low = lorita.load(FCN(hidden=(64, 64)), out / "low_rank.safetensors")
    x = torch.randn(3, 1, 28, 28)
    want = lorita.to_low_rank(plain, ranks).eval()(x)
    torch.testing.assert_close(low.eval()(x), want, atol=1e-5, rtol=1e-5)
    assert "low-rank (energy:0.9): val" in capsys.readouterr().out


def test_compress_multiple_gives_ranks_in_blocks_and_meets_the_budget(trained, tmp_path, capsys):
    out = tmp_path / "c8"
    argv = ["--no-progress", "compress", str(trained), "--policy", "macs:0.3", "--multiple", "8", "--out", str(out)]
    assert main(argv) == 0
    ranks = json.loads((out / "ranks.json").read_text())
    report = json.loads((out / "report.json").read_text())
    # FCN 784-64-64-10: max ranks 64, 64, 10; every rank a multiple of 8 or the layer's full rank
    assert all(r % 8 == 0 or (k == "layers.4" and r == 10) for k, r in ranks.items()), ranks
    assert report["rank_multiple"] == 8 and report["low_rank"]["macs_frac"] <= 0.3 + 1e-9
    assert "ranks in multiples of 8" in capsys.readouterr().out
    assert main(["compress", str(trained), "--policy", "energy:0.9", "--multiple", "0",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--multiple 0: give an int >= 1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_sweep_and_report(trained, tmp_path):
    out = tmp_path / "s"
    assert main(["--no-progress", "sweep", str(trained), "--policy", "params", "--points", "0.1,0.5",
                 "--out", str(out)]) == 0
    res = json.loads((out / "sweep.json").read_text())
    assert [p["point"] for p in res["points"]] == [0.1, 0.5]
    assert all(p["weight_params_frac"] <= p["point"] + 1e-9 for p in res["points"])
    assert (out / "sweep.png").stat().st_size > 1000
    rep = tmp_path / "rep"
    assert main(["--no-progress", "report", str(trained), "--out", str(rep)]) == 0
    assert (rep / "spectra.png").is_file() and (rep / "accuracy_vs_params.png").is_file()
    assert "Accuracy vs weight params kept" in (rep / "report.md").read_text()


def test_demo_smoke(tmp_path, capsys):
    rc = main(["--no-progress", "demo", "--out", str(tmp_path), *SMALL, "--budgets", "0.1,0.5",
               "--model-kwargs", "{\"hidden\": [64, 64]}"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "depth 1" in text and "depth 3" in text
    assert (tmp_path / "report.md").is_file() and (tmp_path / "demo.json").is_file()
    report = (tmp_path / "report.md").read_text()
    assert report.count("| budget |") == 1 and report.count("| dense |") == 1  # the table once, not twice
    assert (tmp_path / "depth1" / "model.safetensors").is_file()
    # `make demo` twice: the demo replaces its own runs instead of refusing them
    assert main(["--no-progress", "demo", "--out", str(tmp_path), *SMALL, "--budgets", "0.5", "--depths", "1",
                 "--model-kwargs", "{\"hidden\": [16]}"]) == 0
    assert json.loads((tmp_path / "depth1" / "config.json").read_text())["model_kwargs"] == {"hidden": [16]}


def test_demo_defaults_to_one_thread_and_flags_work_after_the_command():
    from lorita.cli import build_parser

    p = build_parser()
    assert p.parse_args(["demo"]).threads == 1
    assert p.parse_args(["train", "--out", "x"]).threads is None
    a = p.parse_args(["compress", "run", "--policy", "energy:0.9", "--debug", "--no-progress", "-v"])
    assert (a.debug, a.no_progress, a.verbose) == (True, True, True)
    a = p.parse_args(["--debug", "compress", "run"])
    assert (a.debug, a.no_progress, a.verbose) == (True, False, False)


def test_train_refuses_an_existing_run_unless_resume_or_overwrite(trained, tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["--no-progress", "train", "--model-kwargs", '{"hidden": [16]}', *SMALL, "--out", str(out)]
    assert main(argv) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds a training run (config.json" in err and "--overwrite" in err
    assert (out / "model.safetensors").read_bytes() == before  # untouched
    assert main([*argv, "--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert main([*argv, "--seed", "1", "--resume"]) == 0  # finished run: resume is a no-op, not an error
    # a file where the output folder should go: one line, nothing written
    f = tmp_path / "file.txt"
    f.write_text("keep")
    assert main([*argv[:-1], str(f)]) == 2
    assert f"--out {f} is a file, not a folder" in capsys.readouterr().err
    assert main(["--no-progress", "compress", str(trained), "--policy", "energy:0.9", "--out", str(f)]) == 2
    err = capsys.readouterr().err
    want = f"lorita: error: {f}: File exists (a file is in the way of an output folder; choose another --out)"
    assert err.strip() == want
    assert f.read_text() == "keep"


def test_compress_removes_a_stale_int8_file_of_an_earlier_run(trained, tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "low_rank_int8.pt").write_bytes(b"old model")
    (out / "search_trace.json").write_text("[]")
    assert main(["--no-progress", "compress", str(trained), "--policy", "energy:0.9", "--out", str(out)]) == 0
    assert not (out / "low_rank_int8.pt").exists() and not (out / "search_trace.json").exists()
    (out / "low_rank_int8.pt").write_bytes(b"old model")
    argv = ["--no-progress", "compress", str(trained), "--search", "greedy", "--tolerance", "2", "--out", str(out)]
    before = (out / "report.json").read_bytes()
    assert main(argv) == 2  # an earlier compression is never replaced without asking
    assert (out / "report.json").read_bytes() == before and (out / "low_rank_int8.pt").exists()
    assert main([*argv, "--overwrite"]) == 0
    assert not (out / "low_rank_int8.pt").exists() and (out / "search_trace.json").is_file()


def test_compress_applies_exclude_modules_and_finetune_with_a_policy(trained, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["--no-progress", "compress", str(trained), "--policy", "ratio:0.1", "--exclude-modules", "layers.4",
                 "--out", str(out)]) == 0
    ranks = json.loads((out / "ranks.json").read_text())
    assert set(ranks) == {"layers.0", "layers.2"}  # layers.4 excluded: no rank chosen for it
    plain = lorita.load(FCN(hidden=(64, 64)), out / "merged.safetensors")
    low = lorita.load(FCN(hidden=(64, 64)), out / "low_rank.safetensors")
    assert type(low.layers[4]) is torch.nn.Linear  # dense and untouched
    torch.testing.assert_close(low.layers[4].weight, plain.layers[4].weight, rtol=0, atol=0)
    trunc = lorita.to_low_rank(plain, ranks)
    torch.testing.assert_close(low.layers[0].first.weight, trunc.layers[0].first.weight, rtol=0, atol=0)
    ft = tmp_path / "ft"
    assert main(["--no-progress", "compress", str(trained), "--policy", "ratio:0.1", "--exclude-modules", "layers.4",
                 "--finetune-epochs", "1", "--finetune-batches", "2", "--distill", "--out", str(ft)]) == 0
    report = json.loads((ft / "report.json").read_text())
    assert report["low_rank"]["label"] == "low-rank (ratio:0.1 + fine-tune + distill)"
    tuned = lorita.load(FCN(hidden=(64, 64)), ft / "low_rank.safetensors")
    assert tuned.layers[0].rank == low.layers[0].rank  # same ranks, fine-tuned weights
    assert not torch.equal(tuned.layers[0].first.weight, low.layers[0].first.weight)


@pytest.mark.parametrize("flag", [["--tolerance", "2"], ["--budget", "macs:0.5"], ["--start", "energy:0.99"],
                                  ["--val-samples", "10"], ["--no-keep-dense"]])
def test_search_only_flags_with_a_policy_are_refused(trained, tmp_path, capsys, flag):
    assert main(["compress", str(trained), "--policy", "energy:0.9", *flag, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"lorita: error: {flag[0]} only apply to --search greedy; drop them with --policy (or use --search)"
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("argv,match", [
    (["compress", "/nonexistent/run", "--policy", "energy:0.9"], "run folder /nonexistent/run does not exist"),
    (["train", "--depth", "0", "--out", "x"], "--depth must be an int >= 1"),
    (["train", "--epochs", "0", "--out", "x"], "--epochs must be an int >= 1, got 0"),
    (["train", "--data-dir", "/nonexistent/mnist", "--out", "{tmp}/t"],
     "MNIST folder /nonexistent/mnist does not exist"),
])
def test_cli_errors_are_one_line(argv, match, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorita: error:") and match in err and "Traceback" not in err


def test_unknown_policy_from_a_subprocess_has_no_traceback(trained):
    proc = subprocess.run(
        [sys.executable, "-m", "lorita", "compress", str(trained), "--policy", "entropy:0.9"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown policy kind 'entropy'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
@pytest.mark.parametrize("cmd", [["compress", "--policy", "energy:0.9"], ["sweep"], ["report", "--out", "{tmp}/r"]])
def test_evaluation_commands_reject_missing_cuda_in_one_line(trained, tmp_path, capsys, cmd):
    argv = [cmd[0], str(trained), *[a.replace("{tmp}", str(tmp_path)) for a in cmd[1:]], "--device", "cuda"]
    assert main(["--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "Traceback" not in err


def test_a_head_cut_to_rank_one_is_warned_with_the_flag_that_keeps_it(trained, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lorita", "--no-progress", "compress", str(trained), "--policy", "ratio:0.1",
         "--out", str(tmp_path / "c")], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "gets rank 1" in ln]
    assert len(lines) == 1 and lines[0].startswith("WARNING lorita.ranks.policies: `layers.4` (10×64, max rank 10)")
    assert "(--exclude-modules layers.4)" in lines[0]


def test_eval_batch_size_reaches_the_loaders_and_bad_values_name_the_flag(trained, tmp_path, capsys):
    from lorita.runs.folder import EVAL_BATCH_SIZE, load_run

    assert EVAL_BATCH_SIZE == 256 and load_run(trained).val.batch_size == 256
    run = load_run(trained, eval_batch_size=7)
    assert run.val.batch_size == 7 and run.test.batch_size == 7 and len(run.val) == -(-len(run.data.val_y) // 7)
    assert main(["--no-progress", "compress", str(trained), "--policy", "energy:0.9", "--eval-batch-size", "0",
                 "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.strip() == "lorita: error: --eval-batch-size must be a positive integer, got 0"
    assert not (tmp_path / "c").exists()


def test_old_config_without_new_keys_loads_with_the_old_behaviour(tmp_path):
    from lorita.runs.config import LEGACY_DEFAULTS, TrainConfig

    cfg = TrainConfig(init="default").to_dict()
    for key in LEGACY_DEFAULTS:
        cfg.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    old = TrainConfig.load(tmp_path / "config.json")
    assert (old.init, old.init_scale, old.factor_side, old.clip_grad_norm) == ("default", 1.0, "input", 0.0)
    new = TrainConfig()
    assert (new.init, new.factor_side, new.clip_grad_norm) == ("balanced", "auto", 2.0)


def test_start_flags_reach_the_config():
    from lorita.cli import build_parser
    from lorita.commands import config_from

    args = build_parser().parse_args(["train", "--out", "x", "--init", "preserve", "--init-scale", "0.5",
                                      "--factor-side", "input", "--clip-grad-norm", "0"])
    cfg = config_from(args)
    assert (cfg.init, cfg.init_scale, cfg.factor_side, cfg.clip_grad_norm) == ("preserve", 0.5, "input", 0.0)
    with pytest.raises(ValueError, match="`clip_grad_norm`"):
        config_from(args, clip_grad_norm=-1.0)


def test_library_value_errors_name_the_flag_the_user_typed(trained, tmp_path, capsys):
    assert main(["--no-progress", "compress", str(trained), "--policy", "macs:2", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lorita: error: --policy value must be in (0, 1], got 2") and "`fraction`" not in err
    assert main(["--no-progress", "train", "--depth", "0", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lorita: error:") and "--depth" in err and "`depth`" not in err


def test_demo_parallel_depths_match_sequential(tmp_path, capsys):
    """`--jobs 2` trains each depth in its own spawned process; every depth trains from its own
    seed on one thread, so the weights and the swept accuracies equal the sequential run exactly."""
    from safetensors.torch import load_file

    common = ["--no-progress", "demo", *SMALL, "--budgets", "0.1,0.5", "--threads", "1",
              "--model-kwargs", "{\"hidden\": [32, 32]}"]
    assert main([*common, "--out", str(tmp_path / "seq"), "--jobs", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    seq, par = (json.loads((tmp_path / k / "demo.json").read_text()) for k in ("seq", "par"))
    assert (seq["jobs"], par["jobs"]) == (1, 2)
    for a, b in zip(seq["sweeps"], par["sweeps"]):
        assert [p["test_acc"] for p in a["points"]] == [p["test_acc"] for p in b["points"]]
        assert a["dense"]["val_acc"] == b["dense"]["val_acc"]
    for depth in (1, 3):
        wa = load_file(str(tmp_path / "seq" / f"depth{depth}" / "model.safetensors"))
        wb = load_file(str(tmp_path / "par" / f"depth{depth}" / "model.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert "depth 3" in capsys.readouterr().out


def test_demo_rejects_bad_jobs(tmp_path, capsys):
    assert main(["--no-progress", "demo", "--out", str(tmp_path), *SMALL, "--jobs", "0"]) == 2
    assert "--jobs 0" in capsys.readouterr().err


def test_sweep_layer_budget_with_a_multiple(trained, tmp_path):
    out = tmp_path / "s8"
    assert main(["--no-progress", "sweep", str(trained), "--policy", "layer", "--points", "0.3,0.5",
                 "--multiple", "8", "--out", str(out)]) == 0
    res = json.loads((out / "sweep.json").read_text())
    assert res["rank_multiple"] == 8 and [p["point"] for p in res["points"]] == [0.3, 0.5]
    # FCN 784-64-64-10, layers.0 (64, 784): 0.5·50176/848 = 29.6 -> 29 -> 24; (64, 64): 16 -> 16;
    # the head (10, 64): 4.3 -> 4 (below the multiple: kept)
    assert res["points"][1]["ranks"] == {"layers.0": 24, "layers.2": 16, "layers.4": 4}
    assert all(p["macs_frac"] <= p["point"] for p in res["points"])
    assert "Ranks in multiples of 8." in (out / "sweep.md").read_text()
    # the head kept dense at every point
    assert main(["--no-progress", "sweep", str(trained), "--policy", "layer", "--points", "0.5",
                 "--multiple", "8", "--exclude-modules", "layers.4", "--out", str(tmp_path / "sx")]) == 0
    res = json.loads((tmp_path / "sx" / "sweep.json").read_text())
    assert res["points"][0]["ranks"] == {"layers.0": 24, "layers.2": 16}


def test_sweep_bad_point_names_points_before_loading(tmp_path, capsys):
    # the run folder does not exist: the point is checked first
    assert main(["sweep", str(tmp_path / "nope"), "--policy", "layer", "--points", "0.5,1.5"]) == 2
    err = capsys.readouterr().err
    assert "--points: 1.5 is not a valid layer value" in err and "must be in (0, 1]" in err
    # a measured latency budget is not a sweep kind: refused by the parser, one line
    assert main(["sweep", str(tmp_path / "nope"), "--policy", "latency", "--points", "0.5"]) == 2
    assert "invalid choice: 'latency'" in capsys.readouterr().err


def test_compress_capped_mac_budget_holds_both_budgets(trained, tmp_path, capsys):
    out = tmp_path / "cap"
    assert main(["--no-progress", "compress", str(trained), "--policy", "macs:0.3,cap=0.5", "--exclude-modules",
                 "layers.4", "--out", str(out)]) == 0
    ranks = json.loads((out / "ranks.json").read_text())
    report = json.loads((out / "report.json").read_text())
    # FCN 784-64-64-10: LayerBudget(0.5) ranks are floor(0.5·50176/848) = 29 and floor(0.5·4096/128) = 16,
    # the cap's ceilings; the total MAC budget holds too
    assert ranks.keys() == {"layers.0", "layers.2"} and ranks["layers.0"] <= 29 and ranks["layers.2"] <= 16
    assert report["low_rank"]["macs_frac"] <= 0.3 + 1e-9
    assert "macs:0.3,cap=0.5" in capsys.readouterr().out
    assert main(["--no-progress", "compress", str(trained), "--policy", "macs:0.3,cap=2", "--out",
                 str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lorita: error: --policy cap must be in (0, 1], got 2") and not (tmp_path / "bad").exists()


def test_sweep_with_a_layer_cap(trained, tmp_path, capsys):
    out = tmp_path / "scap"
    assert main(["--no-progress", "sweep", str(trained), "--policy", "macs", "--points", "0.2,0.4",
                 "--layer-cap", "0.5", "--exclude-modules", "layers.4", "--out", str(out)]) == 0
    res = json.loads((out / "sweep.json").read_text())
    assert res["layer_cap"] == 0.5 and [p["label"] for p in res["points"]] == ["macs:0.2,cap=0.5", "macs:0.4,cap=0.5"]
    # (64, 784) and (64, 64) layers: LayerBudget(0.5) ceilings 29 and 16
    assert all(p["ranks"]["layers.0"] <= 29 and p["ranks"]["layers.2"] <= 16 for p in res["points"])
    # the budget is of the targeted layers: 54,272 MACs (the 640 of the dense head kept on top)
    assert all(p["macs"] <= p["point"] * 54272 + 640 for p in res["points"])
    assert "Every layer capped at 0.5 of its own cost." in (out / "sweep.md").read_text()
    capsys.readouterr()
    assert main(["sweep", str(trained), "--policy", "energy", "--layer-cap", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "--layer-cap 0.5: give a number in (0, 1] with --policy params or macs (got --policy energy)" in \
        capsys.readouterr().err

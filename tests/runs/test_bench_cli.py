"""`lorita bench` smoke: compressed and training folders -> bench.json + bench.md; one-line errors."""

import json

import pytest

import lorita
from deploy_fixtures import compressed_run, fake_mnist, trained_run  # noqa: F401  (fixtures)
from lorita.cli import main
from lorita.runs.bench import bench_dirs

# FCN 784-16-10 at rank 4: dense 784·16 + 16·10 = 12704 MACs; split 4·(784+16) + 4·(16+10) = 3304
DENSE_MACS, LOW_RANK_MACS = 12704, 3304


def test_bench_cli_on_a_compressed_folder(compressed_run, capsys):  # noqa: F811
    assert main(["bench", str(compressed_run), "--batch", "1,2", "--rounds", "1"]) == 0
    res = json.loads((compressed_run / "bench.json").read_text())
    rows = res["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [("dense", 1), ("low_rank", 1), ("dense", 2), ("low_rank", 2)]
    assert {r["model"]: r["macs"] for r in rows} == {"dense": DENSE_MACS, "low_rank": LOW_RANK_MACS}
    assert all(r["latency_ratio"] == 1.0 for r in rows if r["model"] == "dense")
    assert all(r["latency_ratio"] > 0 and r["runtime"] == "eager" for r in rows)
    md = (compressed_run / "bench.md").read_text()
    assert "| low_rank | 2 | eager | nchw | 3,304 |" in md and f"{DENSE_MACS / LOW_RANK_MACS:.2f} |" in md
    assert "latency ratio" in capsys.readouterr().out


def test_bench_training_folder_and_fake_timer(trained_run, tmp_path):  # noqa: F811
    def timer(fn, module, inputs):  # trained (factorized, depth 2) vs merged: a fixed 2x
        return [2e-3 if any("Factorized" in type(m).__name__ for m in module.modules()) else 1e-3]

    res = bench_dirs([trained_run], batches=[3], out_dir=tmp_path, timer=timer, rounds=2)
    assert [r["model"] for r in res["rows"]] == ["dense", "trained"]
    assert res["rows"][1]["latency_ratio"] == pytest.approx(0.5)
    assert res["rows"][0]["macs"] == DENSE_MACS and (tmp_path / "bench.md").is_file()


@pytest.mark.parametrize("argv, match", [
    (["--runtime", "tvm"], "--runtime='tvm' is not one of 'eager', 'onnxruntime'"),
    (["--batch", "0"], "must be ints >= 1"),
    (["--threads", "0"], "--threads must be an int >= 1"),
])
def test_bench_bad_flags_are_one_line(compressed_run, capsys, argv, match):  # noqa: F811
    assert main(["bench", str(compressed_run), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lorita: error:") and match in err and "\n" not in err


def test_bench_refuses_a_folder_that_is_neither(tmp_path, capsys):
    assert main(["bench", str(tmp_path)]) == 2
    assert "holds neither low_rank.safetensors" in capsys.readouterr().err


def test_compress_latency_column_and_split_latency(trained_run, fake_mnist, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "c"
    assert main(["compress", str(trained_run), "--policy", "rank:4", "--out", str(out), "--data-dir",
                 str(fake_mnist), "--split", "latency", "--latency", "--latency-batch", "2"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["latency"]["batch"] == 2 and rep["dense"]["latency_ratio"] == 1.0
    assert rep["low_rank"]["latency_ratio"] > 0 and rep["split"] == "latency"
    dec = rep["split_decisions"]
    assert set(dec) == {"layers.0", "layers.2"}
    assert all(d["latency_ratio"] is not None and d["rank"] == 4 for d in dec.values())
    assert "Split decisions" in (out / "report.md").read_text()
    assert "latency ratio (dense/low-rank" in capsys.readouterr().out
    assert main(["compress", str(trained_run), "--search", "greedy", "--split", "latency", "--out",
                 str(tmp_path / "s"), "--data-dir", str(fake_mnist)]) == 2
    assert "--split='latency' applies to a policy" in capsys.readouterr().err


def test_sweep_latency_column(trained_run, fake_mnist, tmp_path):  # noqa: F811
    out = tmp_path / "sw"
    assert main(["sweep", str(trained_run), "--policy", "rank", "--points", "2,4", "--out", str(out),
                 "--data-dir", str(fake_mnist), "--latency", "--latency-batch", "2"]) == 0
    res = json.loads((out / "sweep.json").read_text())
    assert [p["point"] for p in res["points"]] == [2.0, 4.0]
    assert all(p["latency_ratio"] > 0 for p in res["points"]) and "latency_ratio" not in res["dense"]
    assert "| rank:2 |" in (out / "sweep.md").read_text()


@pytest.mark.parametrize("fold_bn", [True, False])
def test_bench_times_models_with_batchnorm_folded_by_default(monkeypatch, tmp_path, fold_bn):
    import torch
    from torch import nn

    import lorita.runs.bench as bench

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    with torch.no_grad():
        dense[1].running_mean.uniform_(-1, 1)
        dense[1].running_var.uniform_(0.5, 2)
    low = lorita.to_low_rank(dense, {"0": 2}).eval()
    monkeypatch.setattr(bench, "folder_models", lambda d: ({"dense": dense, "low_rank": low}, (3, 8, 8)))
    seen = []

    def timer(fn, module, inputs):
        seen.append(sum(isinstance(m, nn.BatchNorm2d) for m in module.modules()))
        return [1e-3]

    res = bench_dirs(["x"], batches=[2], out_dir=tmp_path, timer=timer, rounds=1, fold_bn=fold_bn)
    assert seen == ([0, 0] if fold_bn else [1, 1]) and res["settings"]["fold_bn"] is fold_bn
    assert isinstance(dense[1], nn.BatchNorm2d) and isinstance(low[1], nn.BatchNorm2d)  # stored models untouched

"""CLI: `lorita compress --search greedy ... --finetune-epochs --distill --quantize int8` and
`lorita sweep --search-tolerances`, on a small slice of the bundled MNIST."""

import json

import pytest
import torch

import lorita
from lorita import quantize
from lorita.cli import main
from lorita.models import FCN

SMALL = ["--limit-train", "1500", "--val-size", "500", "--epochs", "1", "--batch-size", "100", "--no-verify"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "d3"
    rc = main(
        [
            "--no-progress",
            "train",
            "--depth",
            "3",
            "--init",  # the paper's start: after this tiny run its spectrum is already low-rank (the
            "default",  # search tests need layers that can shrink; balanced starts from a full-rank init)
            "--model-kwargs",
            '{"hidden": [64, 64]}',
            "--optimizer",
            "adam",
            "--lr",
            "0.003",
            *SMALL,
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


@pytest.mark.skipif(quantize.int8_available() is not None, reason="no int8 quantization in this torch")
def test_compress_search_finetune_distill_int8_artefacts(trained, tmp_path, capsys):
    out = tmp_path / "s"
    rc = main(
        [
            "--no-progress",
            "compress",
            str(trained),
            "--search",
            "greedy",
            "--tolerance",
            "1.0",
            "--budget",
            "macs:0.2",
            "--finetune-epochs",
            "1",
            "--finetune-batches",
            "3",
            "--finetune-when",
            "every",
            "--distill",
            "--quantize",
            "int8",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    for f in (
        "merged.safetensors",
        "low_rank.safetensors",
        "low_rank_int8.pt",
        "ranks.json",
        "report.json",
        "report.md",
        "search_trace.json",
    ):
        assert (out / f).is_file(), f
    rep = json.loads((out / "report.json").read_text())
    trace = json.loads((out / "search_trace.json").read_text())
    assert {"step", "layer", "rank", "macs", "val_acc"} <= set(trace[1])
    floor = rep["search"]["reference"]["acc"] - 0.01
    assert all(r["val_acc"] >= floor for r in trace if r["event"] == "commit")
    assert rep["search"]["config"]["finetune"]["distill"] == {"temperature": 4.0, "weight": 0.5}
    # the budget was met (or the tolerance stopped it first, and the report says so)
    assert rep["search"]["budget_met"] is True or "no reduction keeps" in rep["search"]["stop_reason"]
    if rep["search"]["budget_met"]:
        assert rep["search"]["target_fraction"] <= 0.2
    # bytes reported = bytes on disk, and they shrink dense > low-rank > int8
    sizes = {k: rep[k]["bytes"] for k in ("dense", "low_rank", "int8")}
    assert sizes == {
        "dense": quantize.file_bytes(out / "merged.safetensors"),
        "low_rank": quantize.file_bytes(out / "low_rank.safetensors"),
        "int8": quantize.file_bytes(out / "low_rank_int8.pt"),
    }
    assert sizes["dense"] > sizes["low_rank"] > sizes["int8"]
    # the saved low-rank weights are the fine-tuned ones the search judged: same val accuracy
    low = lorita.load(FCN(hidden=(64, 64)), out / "low_rank.safetensors")
    from lorita.runs.folder import load_run

    run = load_run(trained)
    assert lorita.BatchEvaluator(run.val)(low)["acc"] == pytest.approx(rep["low_rank"]["val_acc"])
    assert rep["low_rank"]["val_acc"] == pytest.approx(rep["search"]["final"]["acc"])
    assert json.loads((out / "ranks.json").read_text()) == rep["search"]["ranks"]
    q = quantize.load_quantized(FCN(hidden=(64, 64)), out / "low_rank_int8.pt")
    assert lorita.BatchEvaluator(run.val)(q)["acc"] == pytest.approx(rep["int8"]["val_acc"])
    assert "search:" in capsys.readouterr().out


def test_sweep_with_search_points_on_one_plot(trained, tmp_path):
    out = tmp_path / "sw"
    assert (
        main(
            [
                "--no-progress",
                "sweep",
                str(trained),
                "--policy",
                "energy",
                "--points",
                "0.9,0.99",
                "--search-tolerances",
                "1,3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads((out / "sweep.json").read_text())
    assert [p["point"] for p in res["search_points"]] == [1.0, 3.0]
    ref = res["dense"]["val_acc"]
    for p in res["search_points"]:
        assert p["val_acc"] >= ref - p["point"] / 100 - 1e-9
    assert res["search_points"][1]["macs"] <= res["search_points"][0]["macs"]
    assert (out / "sweep.png").stat().st_size > 1000
    assert "greedy search" in (out / "sweep.md").read_text()


def test_compress_errors_are_one_line(trained, tmp_path, capsys, monkeypatch):
    assert main(["compress", str(trained), "--out", str(tmp_path / "x")]) == 2
    assert "give a rank policy" in capsys.readouterr().err
    assert main(["compress", str(trained), "--search", "greedy", "--budget", "flops:0.1"]) == 2
    assert "invalid budget 'flops:0.1'" in capsys.readouterr().err
    assert main(["compress", str(trained), "--search", "greedy", "--policy", "energy:0.9"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["compress", str(trained), "--search", "greedy", "--start", "macs:0.3"]) == 2
    assert "--start macs:0.3: a MAC budget cannot be a start here" in capsys.readouterr().err
    assert main(["compress", str(trained), "--search", "greedy", "--start", "enrgy:0.9"]) == 2
    assert "unknown policy kind 'enrgy'" in capsys.readouterr().err
    monkeypatch.setattr(quantize, "int8_available", lambda: "no quantized engine")
    assert main(["compress", str(trained), "--policy", "energy:0.9", "--quantize", "int8"]) == 2
    assert "--quantize int8 is not available here: no quantized engine" in capsys.readouterr().err


def test_compress_search_warm_start(trained, tmp_path):
    out = tmp_path / "warm"
    args = ["--no-progress", "compress", str(trained), "--search", "greedy", "--start", "energy:0.999"]
    assert main([*args, "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    trace = json.loads((out / "search_trace.json").read_text())
    assert rep["search"]["config"]["start"] == "energy:0.999"
    first = trace[0]
    assert first["event"] == "start" and first["macs"] < rep["dense"]["macs"]
    assert rep["low_rank"]["val_acc"] >= rep["dense"]["val_acc"] - 0.01 - 1e-9


def test_one_shot_compress_with_int8(trained, tmp_path):
    if quantize.int8_available() is not None:
        pytest.skip("no int8 quantization in this torch")
    out = tmp_path / "c"
    assert (
        main(
            [
                "--no-progress",
                "compress",
                str(trained),
                "--policy",
                "energy:0.9",
                "--quantize",
                "int8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rep = json.loads((out / "report.json").read_text())
    assert rep["int8"]["bytes"] == quantize.file_bytes(out / "low_rank_int8.pt") < rep["low_rank"]["bytes"]
    assert rep["int8"]["macs"] == rep["low_rank"]["macs"]
    x = torch.randn(4, 1, 28, 28)
    low = lorita.load(FCN(hidden=(64, 64)), out / "low_rank.safetensors").eval()
    q = quantize.load_quantized(FCN(hidden=(64, 64)), out / "low_rank_int8.pt")
    assert (q(x) - low(x)).abs().max() < 0.1 * low(x).abs().max()

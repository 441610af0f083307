"""`lorita export --int8` (issue 9 item 4): int8 file next to the fp32 one, calibrated on training
images, with bytes and validation accuracy of both in NAME.int8.json/.md."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from deploy_fixtures import compressed_run, fake_mnist, trained_run  # noqa: E402, F401
from lorita.cli import main  # noqa: E402
from lorita.runs.export import int8_paths  # noqa: E402


def test_int8_paths():
    assert {k: p.name for k, p in int8_paths("/x/model.onnx").items()} == {
        "onnx": "model.int8.onnx", "json": "model.int8.json", "md": "model.int8.md"}


def test_export_int8_from_a_compressed_folder(compressed_run, fake_mnist, tmp_path, capsys):  # noqa: F811
    onnx = tmp_path / "model.onnx"
    argv = ["export", str(compressed_run), "--onnx", str(onnx), "--int8", "--calibration-samples", "64",
            "--val-samples", "30", "--data-dir", str(fake_mnist)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    paths = int8_paths(onnx)
    assert onnx.is_file() and all(p.is_file() for p in paths.values())
    summary = json.loads(paths["json"].read_text())
    assert summary["calibration_samples"] == 64 and summary["val_samples"] == 30
    assert summary["fp32"]["bytes"] == onnx.stat().st_size and summary["int8"]["bytes"] == paths["onnx"].stat().st_size
    assert summary["int8"]["bytes"] < summary["fp32"]["bytes"]
    assert 0.0 <= summary["agreement"] <= 1.0 and 0.0 <= summary["int8"]["val_acc"] <= 1.0
    assert f"-> {paths['onnx']}" in out and "top-1 agreement on 30 validation images" in out
    assert "| model.int8.onnx (int8) |" in paths["md"].read_text()
    before = paths["onnx"].read_bytes()
    assert main(argv) == 2  # a rerun without --overwrite is refused (one line) and changes nothing
    assert capsys.readouterr().err.strip().endswith("already exists; pass --overwrite to replace it, or choose "
                                                    "another path")
    assert paths["onnx"].read_bytes() == before


def test_int8_flags_without_int8_are_refused(trained_run, tmp_path, capsys):  # noqa: F811
    argv = ["export", str(trained_run), "--onnx", str(tmp_path / "m.onnx"), "--form", "dense",
            "--calibration-samples", "10"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "lorita: error: --calibration-samples applies to int8 export; add --int8 (or drop it)")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_calibration_samples_is_one_line(trained_run, fake_mnist, tmp_path, capsys):  # noqa: F811
    argv = ["export", str(trained_run), "--onnx", str(tmp_path / "m.onnx"), "--form", "dense", "--int8",
            "--calibration-samples", "0", "--data-dir", str(fake_mnist)]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == "lorita: error: --calibration-samples must be an int >= 1, got 0"
    assert list(tmp_path.iterdir()) == []

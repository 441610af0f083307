"""CIFAR models through the pipeline and CLI on a tiny fake CIFAR-10 folder; resume equality."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from _cifar_files import write_bin  # noqa: I001  (tests/ is on sys.path under pytest)
from lorita.cli import main
from lorita.models import build_model
from lorita.runs import train as train_mod
from lorita.runs.compress import compress
from lorita.runs.config import TrainConfig
from lorita.runs.train import train_run

TINY = {
    "resnet20": {"width": 2},
    "resnet18": {"width": 2, "blocks": [1, 1, 1, 1]},
    "vgg16": {"width_mult": 0.03125},
    "vit": {"dim": 16, "num_layers": 1, "heads": 2, "dim_head": 8, "mlp_dim": 16},
}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar")
    write_bin(folder)  # 30 train + 8 test images
    return folder


def _cfg(cifar_dir, **over) -> TrainConfig:
    base = dict(model="resnet20", model_kwargs=TINY["resnet20"], dataset="cifar10", data_dir=str(cifar_dir),
                verify=False, val_size=6, depth=3, epochs=3, batch_size=8, lr=0.05, weight_decay=1e-3,
                augment=True, label_smoothing=0.1, warmup_epochs=1.0, seed=1)
    base.update(over)
    return TrainConfig(**base)


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_model_trains_merges_and_compresses(cifar_dir, tmp_path, name):
    cfg = _cfg(cifar_dir, model=name, model_kwargs=TINY[name], epochs=1)
    summary = train_run(cfg, tmp_path / "run", progress=False)
    assert summary["depth"] == 3 and 0.0 <= summary["val_acc"] <= 1.0
    rep = compress(tmp_path / "run", tmp_path / "cmp", "macs:0.5")
    dense, low = rep["dense"], rep["low_rank"]
    # All targeted layers share the MAC budget; other MACs (ViT attention, patch embedding, head)
    # are untouched, so the total shrinks by at most the targeted part.
    assert low["macs"] < dense["macs"] and low["weight_params"] < dense["weight_params"]
    if name != "vit":  # CNNs: every counted MAC is in a targeted layer
        assert low["macs"] <= 0.5 * dense["macs"]
    merged = load_file(tmp_path / "cmp" / "merged.safetensors")
    fresh = build_model(name, num_classes=10, **TINY[name])
    fresh.load_state_dict(merged, strict=True)  # merged weights load into the plain class


def _interrupting(after: int):
    real = train_mod.train_one_epoch
    calls = {"n": 0}

    def fake(*args, **kwargs):
        if calls["n"] == after:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        return real(*args, **kwargs)

    return fake


def test_resume_equals_uninterrupted(cifar_dir, tmp_path, monkeypatch):
    cfg = _cfg(cifar_dir)
    full = train_run(cfg, tmp_path / "full", progress=False)
    monkeypatch.setattr(train_mod, "train_one_epoch", _interrupting(after=2))
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "cut", progress=False)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    state = torch.load(tmp_path / "cut" / "resume.pt", weights_only=True)
    assert state["epoch"] == 1  # epochs 1 and 2 finished, the third was interrupted
    monkeypatch.undo()
    resumed = train_run(cfg, tmp_path / "cut", progress=False, resume=True)
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and any(".factors." in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical weights, BN statistics included
    assert resumed["val_acc"] == full["val_acc"]
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r, f in zip(rows, ref, strict=True):
        r.pop("seconds"), f.pop("seconds")
        assert r == f


def test_resume_with_other_config_refused(cifar_dir, tmp_path):
    train_run(_cfg(cifar_dir, epochs=1), tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "resume.pt").exists()  # a finished run keeps no optimizer checkpoint
    with pytest.raises(ValueError, match=r"different config: lr=0\.5 \(saved: 0\.05\), epochs=2 \(saved: 1\)"):
        train_run(_cfg(cifar_dir, epochs=2, lr=0.5), tmp_path / "r", progress=False, resume=True)


def test_cli_interrupt_says_how_to_resume_and_resume_needs_no_flags(cifar_dir, tmp_path, monkeypatch, capsys):
    run = str(tmp_path / "run")
    argv = ["--no-progress", "train", "--model", "resnet20", "--model-kwargs", '{"width": 2}', "--dataset",
            "cifar10", "--data-dir", str(cifar_dir), "--no-verify", "--val-size", "6", "--epochs", "3",
            "--batch-size", "8", "--depth", "2", "--factorize-at", "0", "--out", run]
    monkeypatch.setattr(train_mod, "train_one_epoch", _interrupting(after=1))
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lorita: interrupted; finished epochs are saved in {run} — continue with: lorita train --out {run} --resume"
    )
    monkeypatch.undo()
    assert main(["--no-progress", "train", "--out", run, "--epochs", "4", "--resume"]) == 2
    assert "different config: epochs=4 (saved: 3)" in capsys.readouterr().err
    assert main(["--no-progress", "train", "--out", run, "--resume"]) == 0  # the saved config, no other flag
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]
    assert not (tmp_path / "run" / "resume.pt").exists()


def test_cli_train_compress_sweep_report(cifar_dir, tmp_path, capsys):
    run = str(tmp_path / "run")
    common = ["--no-progress", "train", "--model", "resnet20", "--model-kwargs", '{"width": 2}', "--dataset",
              "cifar10", "--data-dir", str(cifar_dir), "--no-verify", "--val-size", "6", "--epochs", "2",
              "--batch-size", "8", "--augment", "--depth", "3", "--factorize-at", "0", "--weight-decay", "1e-3",
              "--out", run]
    assert main(common) == 0
    assert main(common + ["--resume"]) == 0  # everything done: resuming only rewrites the outputs
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["compress", run, "--policy", "macs:0.4", "--out", str(tmp_path / "c")]) == 0
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    assert rep["low_rank"]["macs"] <= 0.4 * rep["dense"]["macs"]
    assert main(["--no-progress", "sweep", run, "--policy", "macs", "--points", "0.4,0.7"]) == 0
    sweep = json.loads((tmp_path / "run" / "sweep-macs" / "sweep.json").read_text())
    assert [p["point"] for p in sweep["points"]] == [0.4, 0.7]
    assert all(p["macs_frac"] <= p["point"] + 1e-9 for p in sweep["points"])
    capsys.readouterr()


def test_cli_report_on_vit(cifar_dir, tmp_path, capsys):
    # A 1-block ViT keeps the spectra figure small (4 targeted layers) so the test stays fast.
    runs = []
    for depth in (1, 3):
        run = str(tmp_path / f"d{depth}")
        assert main(["--no-progress", "train", "--model", "vit", "--model-kwargs", json.dumps(TINY["vit"]),
                     "--dataset", "cifar10", "--data-dir", str(cifar_dir), "--no-verify", "--val-size", "6",
                     "--epochs", "1", "--batch-size", "8", "--depth", str(depth), "--out", run]) == 0
        runs.append(run)
    assert main(["--no-progress", "report", *runs, "--labels", "depth 1", "depth 3", "--out",
                 str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "depth 1" in text and "depth 3" in text
    assert (tmp_path / "rep" / "spectra.png").stat().st_size > 0
    capsys.readouterr()


def test_cli_device_errors(cifar_dir, tmp_path, capsys):
    args = ["train", "--model", "resnet20", "--dataset", "cifar10", "--data-dir", str(cifar_dir),
            "--no-verify",
            "--epochs", "1", "--out", str(tmp_path / "x")]
    if not torch.cuda.is_available():
        assert main(args + ["--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert main(args + ["--device", "tpu9"]) == 2
    assert "not a valid torch device" in capsys.readouterr().err

"""`factorize_at` ("factorize late"): K plain epochs, then the rest at depth N from that model."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lorita.cli import main
from lorita.runs.config import TrainConfig
from lorita.runs.folder import load_run
from lorita.runs.train import PLAIN_DIR, train_run

SMALL = dict(model="fcn", model_kwargs={"hidden": [32]}, limit_train=600, val_size=200, batch_size=100,
             lr=0.02, weight_decay=1e-3)


def _epochs(path):
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


def test_equals_the_two_runs_it_composes(tmp_path):
    late = TrainConfig(**SMALL, depth=2, epochs=3, factorize_at=1)
    s = train_run(late, tmp_path / "late", progress=False)
    # The same two phases by hand: 1 plain epoch, then depth 2 for 2 epochs from that run.
    train_run(TrainConfig(**SMALL, depth=1, epochs=1), tmp_path / "p", progress=False)
    train_run(TrainConfig(**SMALL, depth=2, epochs=2, init_from=str(tmp_path / "p")), tmp_path / "f", progress=False)
    a, b = load_file(tmp_path / "late" / "model.safetensors"), load_file(tmp_path / "f" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise: same ops, same seeds
    pa = load_file(tmp_path / "late" / PLAIN_DIR / "model.safetensors")
    assert all(torch.equal(pa[k], v) for k, v in load_file(tmp_path / "p" / "model.safetensors").items())
    # The folder records the user's config, numbers the epochs of the whole run and loads as usual.
    assert TrainConfig.load(tmp_path / "late" / "config.json") == late
    assert _epochs(tmp_path / "late" / "metrics.jsonl") == [2, 3]
    assert _epochs(tmp_path / "late" / PLAIN_DIR / "metrics.jsonl") == [1]
    assert s["epochs"] == 3 and s["depth"] == 2
    plain_s = json.loads((tmp_path / "late" / PLAIN_DIR / "summary.json").read_text())
    assert s["plain_val_acc"] == plain_s["val_acc"]
    rows = (tmp_path / "late" / "metrics.jsonl").read_text().splitlines()
    late_seconds = sum(json.loads(line)["seconds"] for line in rows)
    assert s["wall_seconds"] == pytest.approx(plain_s["wall_seconds"] + late_seconds)
    assert s["plain_wall_seconds"] == pytest.approx(plain_s["wall_seconds"])
    run = load_run(tmp_path / "late")
    x = torch.randn(4, 1, 28, 28)
    assert run.dense(x).shape == (4, 10)
    # Resuming a finished run changes nothing (the wall time is not counted twice).
    again = train_run(late, tmp_path / "late", progress=False, resume=True)
    assert again == s


def test_resume_after_the_plain_phase(tmp_path):
    late = TrainConfig(**SMALL, depth=2, epochs=2, factorize_at=1)
    train_run(late, tmp_path / "ref", progress=False)
    # Cut off after phase 1: only the plain sub-folder exists; a new run without resume refuses it.
    train_run(TrainConfig(**SMALL, depth=1, epochs=1), tmp_path / "cut" / PLAIN_DIR, progress=False)
    with pytest.raises(ValueError, match="resume"):
        train_run(late, tmp_path / "cut", progress=False)
    train_run(late, tmp_path / "cut", progress=False, resume=True)
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kw, match", [
    (dict(depth=2, epochs=3, factorize_at=3), "`factorize_at` must be an int in 0..2"),
    (dict(depth=2, epochs=3, factorize_at=-1), "`factorize_at` must be an int in 0..2"),
    (dict(depth=1, epochs=3, factorize_at=1), "needs `depth` > 1"),
    (dict(depth=2, epochs=3, factorize_at=1, init="default"), "needs `init` 'balanced' or 'preserve'"),
])
def test_bad_values_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{**SMALL, **kw})


def test_cli_flag(tmp_path, capsys):
    base = ["--no-progress", "train", "--model-kwargs", '{"hidden": [32]}', "--limit-train", "600",
            "--val-size", "200", "--epochs", "2", "--batch-size", "100", "--depth", "2"]
    assert main([*base, "--factorize-at", "1", "--out", str(tmp_path / "r")]) == 0
    assert TrainConfig.load(tmp_path / "r" / "config.json").factorize_at == 1
    assert (tmp_path / "r" / PLAIN_DIR / "model.safetensors").is_file()
    capsys.readouterr()
    assert main([*base, "--factorize-at", "2", "--out", str(tmp_path / "bad")]) != 0
    err = capsys.readouterr().err
    assert "--factorize-at" in err and "0..1" in err and not (tmp_path / "bad").exists()

"""`factorize_at` ("factorize late"): K plain epochs, then the rest at depth N from that model."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lorita.cli import main
from lorita.engine import make_scheduler
from lorita.runs.config import TrainConfig
from lorita.runs.folder import load_run
from lorita.runs.train import PLAIN_DIR, train_run

SMALL = dict(model="fcn", model_kwargs={"hidden": [32]}, limit_train=600, val_size=200, batch_size=100,
             lr=0.02, weight_decay=1e-3)


def _epochs(path):
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_schedule_start_step_joins_the_schedule():
    def lrs(start, n):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched = make_scheduler("cosine", opt, 20, warmup_steps=4, start_step=start)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs(7, 13) == pytest.approx(lrs(0, 20)[7:], rel=1e-12)
    # warm-up steps 2, 3 of 4 (3/4, 4/4), then cosine steps 0, 1 of 16
    assert lrs(2, 4) == pytest.approx([0.075, 0.1, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 16))], rel=1e-12)


def test_plain_phase_is_the_start_of_a_plain_run_on_one_schedule(tmp_path):
    late = TrainConfig(**SMALL, depth=2, epochs=3, factorize_at=1, warmup_epochs=1)
    s = train_run(late, tmp_path / "late", progress=False)
    plain = _rows(tmp_path / "late" / PLAIN_DIR / "metrics.jsonl")
    train_run(TrainConfig(**SMALL, depth=1, epochs=3, warmup_epochs=1), tmp_path / "d1", progress=False)
    full = _rows(tmp_path / "d1" / "metrics.jsonl")
    # Epoch 1 of the late run is epoch 1 of a plain 3-epoch run, bit for bit (same seed, data, schedule).
    assert [{k: r[k] for k in ("train_loss", "val_acc", "lr")} for r in plain] == \
        [{k: r[k] for k in ("train_loss", "val_acc", "lr")} for r in full[:1]]
    # The late phase continues that schedule (no second warm-up) and ends at lr 0.
    rows = _rows(tmp_path / "late" / "metrics.jsonl")
    assert [r["lr"] for r in rows] == pytest.approx([r["lr"] for r in full[1:]], rel=1e-9)
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    # The folder records the user's config, numbers the epochs of the whole run and loads as usual.
    assert TrainConfig.load(tmp_path / "late" / "config.json") == late
    assert [r["epoch"] for r in rows] == [2, 3]
    assert _epochs(tmp_path / "late" / PLAIN_DIR / "metrics.jsonl") == [1]
    assert s["epochs"] == 3 and s["depth"] == 2
    plain_s = json.loads((tmp_path / "late" / PLAIN_DIR / "summary.json").read_text())
    assert s["plain_val_acc"] == plain_s["val_acc"]
    late_seconds = sum(r["seconds"] for r in rows)
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
    train_run(late, tmp_path / "cut", progress=False)
    for f in (tmp_path / "cut").iterdir():
        if f.is_file():
            f.unlink()
    before = (tmp_path / "cut" / PLAIN_DIR / "summary.json").read_text()
    with pytest.raises(ValueError, match="resume"):
        train_run(late, tmp_path / "cut", progress=False)
    train_run(late, tmp_path / "cut", progress=False, resume=True)
    assert (tmp_path / "cut" / PLAIN_DIR / "summary.json").read_text() == before  # not trained again
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


def test_late_phase_continues_the_shuffle_order(tmp_path, monkeypatch):
    from lorita.data.splits import TensorLoader

    seen = []
    orig = TensorLoader.set_epoch

    def record(self, epoch):
        if self.shuffle:
            seen.append(epoch)
        orig(self, epoch)

    monkeypatch.setattr(TensorLoader, "set_epoch", record)
    train_run(TrainConfig(**SMALL, depth=2, epochs=3, factorize_at=1), tmp_path / "late", progress=False)
    # Plain epoch 0, then the factorized epochs 1 and 2: no permutation is seen twice.
    assert seen == [0, 1, 2]


def test_progress_bars_count_the_whole_run(tmp_path, monkeypatch):
    import lorita.runs.train as train_mod

    descs = []
    orig = train_mod.train_one_epoch

    def record(*args, **kwargs):
        descs.append(kwargs["desc"])
        return orig(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", record)
    train_run(TrainConfig(**SMALL, depth=2, epochs=3, factorize_at=1), tmp_path / "late", progress=False)
    # The plain phase's bar counts toward the run's 3 epochs, not its own 1.
    assert descs == ["epoch 1/3 (depth 1)", "epoch 2/3 (depth 2)", "epoch 3/3 (depth 2)"]

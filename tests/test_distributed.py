"""DDP: a factorized model trains on 2 CPU processes (gloo) started by torch's torchrun launcher;
every rank ends with identical weights; merged and saved keys carry no `module.` prefix; the
`lorita train` DDP path writes one run from rank 0. One launch keeps the test quick."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import lorita
from deploy_fixtures import fake_mnist  # noqa: F401
from lorita import distributed
from lorita.cli import main
from lorita.models import FCN

WORKER = Path(__file__).with_name("ddp_worker.py")


def _plain() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def test_two_process_ddp_identical_weights_bare_keys_and_cli_run(tmp_path, fake_mnist, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PYTHONPATH", str(WORKER.parent) + ":" + __import__("os").environ.get("PYTHONPATH", ""))
    assert distributed.launch([str(WORKER), str(tmp_path), str(fake_mnist)], nproc=2) == 0
    # 1. library-level DDP
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert set(r0) == set(r1) and len(r0) == 8  # 3 factors + bias per layer
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # bit-identical replicas (ranks started from different seeds)
    for name in ("rank0", "rank1"):
        with safe_open(str(tmp_path / f"{name}.safetensors"), "pt") as f:
            assert f.metadata()["n"] == "32"  # disjoint halves of the 64 samples
    for name in ("merged", "factorized"):
        assert not any(k.startswith("module.") for k in _keys(tmp_path / f"{name}.safetensors"))
    merged = lorita.load(_plain(), tmp_path / "merged.safetensors")
    fact = lorita.load(_plain(), tmp_path / "factorized.safetensors")
    assert type(merged[3]) is nn.Linear and isinstance(fact[3], lorita.FactorizedLinear)
    torch.testing.assert_close(fact[3].factors[0], r0["3.factors.0"], rtol=0, atol=0)
    x = torch.randn(4, 1, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), fact(x), rtol=1e-5, atol=1e-5)
    # 2. the `lorita train` DDP path (rank 0 wrote one run)
    run = tmp_path / "cli_run"
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert not any(k.startswith("module.") for k in _keys(run / "model.safetensors"))
    assert isinstance(lorita.load(FCN(hidden=[16]), run / "model.safetensors").layers[0], lorita.FactorizedLinear)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    late = tmp_path / "cli_late"
    for folder in (late, late / "plain"):
        assert json.loads((folder / "summary.json").read_text())["world_size"] == 2
    assert [json.loads(line)["epoch"] for line in (late / "metrics.jsonl").read_text().splitlines()] == [2]
    assert isinstance(lorita.load(FCN(hidden=[16]), late / "model.safetensors").layers[0], lorita.FactorizedLinear)


def test_train_nproc_relaunches_the_same_command_through_the_launcher(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(distributed, "launch", lambda args, nproc: calls.append((list(args), nproc)) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["train", "--out", str(tmp_path / "r"), "--nproc", "2", "--epochs", "1"]
    assert main(argv) == 0
    assert calls == [(["-m", "lorita", *argv], 2)]
    assert not (tmp_path / "r").exists()  # the parent trains nothing itself


def test_launch_reports_failed_processes_in_one_line(tmp_path):
    bad = tmp_path / "fail.py"
    bad.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(ValueError, match=r"2 of 2 processes failed \(exit codes \[3\]\)"):
        distributed.launch([str(bad)], nproc=2)

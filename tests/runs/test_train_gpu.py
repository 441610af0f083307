"""CUDA checks (skipped without a GPU): bf16 autocast training, resume, exact merge on the device."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_cifar_cli import _cfg, _interrupting  # noqa: I001

from _cifar_files import write_bin
from lorita import factorize, merge
from lorita.models import build_model
from lorita.runs.train import train_run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_amp_training_and_resume(tmp_path, monkeypatch):
    from lorita.runs import train as train_mod

    write_bin(tmp_path / "cifar")
    cfg = _cfg(tmp_path / "cifar", device="cuda", amp=True)
    full = train_run(cfg, tmp_path / "full", progress=False)
    monkeypatch.setattr(train_mod, "train_one_epoch", _interrupting(after=1))
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "cut", progress=False)
    monkeypatch.undo()
    resumed = train_run(cfg, tmp_path / "cut", progress=False, resume=True)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    # cuDNN may pick non-deterministic kernels: equal up to float noise, not bit for bit.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
    assert abs(resumed["val_acc"] - full["val_acc"]) <= 1 / 6 + 1e-9


@pytest.mark.parametrize("name", ["resnet20", "vit"])
def test_cuda_merge_exact(name):
    kw = {"width": 8} if name == "resnet20" else {"dim": 32, "num_layers": 2, "heads": 4, "dim_head": 8}
    fac = factorize(build_model(name, **kw), depth=3).cuda().eval()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(merge(fac)(x), fac(x), rtol=1e-4, atol=1e-4)

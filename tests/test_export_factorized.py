"""export_onnx of a factorized (training-form) model with forward_mode="auto", export error
messages, and the exporter's known noise (issue 12, items 4 and 6)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import lorita
from lorita.export import _one_line
from lorita.models import build_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_factorized_resnet_in_auto_mode_exports_for_any_batch(tmp_path):
    # "auto" picks chain or merged per call by the batch size; torch.export used to fail on that
    # branch ("Expected op to be '==', got <= for batch <= 11/4", message cut at "Next steps:").
    torch.manual_seed(0)
    model = lorita.factorize(build_model("resnet20"), depth=3).train()
    autos = [m for m in model.modules() if getattr(m, "forward_mode", None) == "auto"]
    assert autos
    path, diff = lorita.export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "r.onnx")
    assert diff is not None and diff < 1e-3
    assert model.training and all(m.forward_mode == "auto" for m in autos)  # the input is untouched
    sess = ort.InferenceSession(str(path))
    model.eval()
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            want = model(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)


def test_one_line_takes_torch_onnx_exception_summary():
    text = (
        "Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of exporting the "
        "model to ONNX. Next steps:\n- Modify the model code\n- Debug `torch.export.export`\n\n"
        "## Exception summary\n\n<class 'AssertionError'>: Expected op to be '==', got <= for batch <= 11/4\n\n"
        "(Refer to the full stack trace above for more information.)"
    )
    assert _one_line(RuntimeError(text)) == (
        "<class 'AssertionError'>: Expected op to be '==', got <= for batch <= 11/4"
    )
    assert _one_line(RuntimeError("first line\nsecond")) == "first line"
    assert _one_line(RuntimeError("")) == "RuntimeError"


def test_export_prints_no_torchvision_or_future_warning_noise(tmp_path):
    # A fresh interpreter: the exporter logs its torchvision notices once per process.
    code = textwrap.dedent(
        f"""
        import torch, lorita
        from torch import nn
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        lorita.export_onnx(m, torch.randn(2, 4), {str(tmp_path / "m.onnx")!r})
        import warnings
        warnings.warn("still-visible", FutureWarning)  # the filter was local to the call
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "torchvision is not installed" not in proc.stderr
    assert "LeafSpec" not in proc.stderr
    assert "still-visible" in proc.stderr

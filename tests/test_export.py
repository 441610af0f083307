"""ONNX export of the low-rank model (torch.onnx), checked against onnxruntime; the CLI contract
of `lorita export`. Skipped when the optional `onnx` extra is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import lorita
from deploy_fixtures import compressed_run, fake_mnist, tiny_input, trained_run  # noqa: F401
from lorita.cli import main
from lorita.export import ONNX_ATOL, ONNX_RTOL, export_onnx, onnx_max_abs_diff

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


class _ConvNet(nn.Module):
    """TinyNet without the attention (exporting nn.MultiheadAttention costs seconds; not tested here)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.conv1d = nn.Conv1d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(2)
        return self.fc(torch.relu(self.conv1d(h)).flatten(1))


def test_low_rank_model_exports_and_onnxruntime_matches(tmp_path):
    """Linear/Conv2d/Conv1d split layers; any batch size (dynamic axis)."""
    torch.manual_seed(0)
    low = lorita.to_low_rank(_ConvNet(), {"conv": 2, "conv1d": 3, "fc": 2}).eval()
    assert isinstance(low.conv, lorita.LowRankConv2d) and isinstance(low.fc, lorita.LowRankLinear)
    path, diff = export_onnx(low, tiny_input(2), tmp_path / "low.onnx")
    assert path.is_file() and diff is not None and diff <= ONNX_ATOL
    for batch in (1, 5):  # not the traced batch size
        worst, within = onnx_max_abs_diff(low, path, tiny_input(batch, seed=batch))
        assert within and worst <= ONNX_ATOL + ONNX_RTOL, (batch, worst)
    assert [p.name for p in tmp_path.iterdir()] == ["low.onnx"]  # no temp files left


def test_failed_export_writes_nothing(tmp_path):
    class Bad(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: not exportable
                return x
            return -x

    with pytest.raises(ValueError, match="torch.onnx.export failed for Bad") as info:
        export_onnx(Bad(), torch.randn(2, 3), tmp_path / "bad.onnx")
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)  # one line, no colour codes
    assert list(tmp_path.iterdir()) == []


def test_wrong_input_shape_is_one_clear_error_before_exporting(tmp_path, capfd):
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)).train()
    with pytest.raises(ValueError) as info:
        export_onnx(model, torch.randn(2, 5), tmp_path / "m.onnx")
    msg = str(info.value)
    assert msg.startswith("Sequential fails on `example_inputs` of shape (2, 5) (RuntimeError: mat1 and mat2 shapes "
                          "cannot be multiplied (2x5 and 8x4)); pass example inputs the model accepts")
    assert "\n" not in msg and "\x1b" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "fake_tensor" not in capfd.readouterr().err  # torch.export never ran
    assert list(tmp_path.iterdir()) == [] and model.training  # nothing written, mode restored
    with pytest.raises(ValueError, match=r"of shapes \(2, 8\), \(3,\) \(TypeError: "):
        export_onnx(model, (torch.randn(2, 8), torch.randn(3)), tmp_path / "m.onnx")


def test_cli_export_compressed_folder(compressed_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "m.onnx"
    assert main(["export", str(compressed_run), "--onnx", str(out)]) == 0
    msg = capsys.readouterr().out
    assert "exported low_rank model" in msg and "max |diff|" in msg
    # onnxruntime on a fresh batch equals the low-rank PyTorch model rebuilt from the folder
    from lorita.runs.export import _model_from_compressed

    model, shape = _model_from_compressed(compressed_run, "low_rank")
    assert shape == (1, 28, 28)
    assert any(isinstance(m, lorita.LowRankLinear) for m in model.modules())
    worst, within = onnx_max_abs_diff(model, out, torch.randn(3, *shape))
    assert within, worst


def test_cli_export_training_folder_needs_a_policy(trained_run, fake_mnist, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "t.onnx"
    assert main(["export", str(trained_run), "--onnx", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lorita: error:") and "give --policy" in err and "\n" not in err
    assert not out.exists()
    assert main(["export", str(trained_run), "--onnx", str(out), "--form", "dense",
                 "--data-dir", str(fake_mnist)]) == 0
    assert out.is_file()


def test_export_of_an_empty_folder_names_the_contract(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--onnx", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "holds neither low_rank.safetensors" in err and "lorita compress" in err
    assert not Path(tmp_path / "x.onnx").exists()


def test_cli_export_searched_folder(trained_run, fake_mnist, tmp_path):  # noqa: F811
    searched = tmp_path / "searched"
    assert main(["--no-progress", "compress", str(trained_run), "--search", "greedy", "--tolerance", "5",
                 "--out", str(searched), "--data-dir", str(fake_mnist)]) == 0
    out = tmp_path / "s.onnx"
    assert main(["export", str(searched), "--onnx", str(out)]) == 0
    from lorita.runs.export import _model_from_compressed

    model, shape = _model_from_compressed(searched, "low_rank")
    worst, within = onnx_max_abs_diff(model, out, torch.randn(2, *shape))
    assert within, worst

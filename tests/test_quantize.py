"""Dynamic int8 quantization of low-rank models: error bound, file round trip, bytes on disk."""

import re
from pathlib import Path

import pytest
import torch

import lorita
from lorita import quantize
from lorita.data import load_mnist, make_transform
from lorita.engine import make_optimizer
from lorita.models import FCN

MNIST_DIR = Path(__file__).resolve().parents[1] / "data" / "mnist"
pytestmark = pytest.mark.skipif(
    quantize.int8_available() is not None, reason="no int8 quantization in this torch"
)


@pytest.fixture(scope="module")
def trained():
    """A plain FCN 784-128-128-10 trained for 50 Adam steps on MNIST, its rank-24 split, val batch."""
    d = load_mnist(MNIST_DIR, val_size=1000, verify=False)
    tf = make_transform(d, train=False, augment=False)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = FCN(hidden=(128, 128))
    opt = make_optimizer("adam", model.parameters(), 2e-3)
    for _ in range(50):
        idx = torch.randint(0, len(d.train_y), (100,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(tf(d.train_x[idx], g)), d.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    low = lorita.to_low_rank(model, {"layers.0": 24, "layers.2": 24}).eval()
    return model, low, tf(d.val_x[:500], g), d.val_y[:500]


def test_int8_outputs_within_stated_error_of_float_low_rank(trained):
    _, low, x, y = trained
    q = quantize.quantize_int8(low)
    assert sum(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in q.modules()) == 5
    with torch.no_grad():
        f, i8 = low(x), q(x)
    rel = float((i8 - f).norm() / f.norm())
    agree = float((i8.argmax(1) == f.argmax(1)).float().mean())
    # stated bound (README): relative logit error <= 5%, predictions agree on >= 97% of images
    assert rel <= 0.05 and agree >= 0.97
    acc_f, acc_q = float((f.argmax(1) == y).float().mean()), float((i8.argmax(1) == y).float().mean())
    assert acc_f > 0.8 and abs(acc_q - acc_f) <= 0.01
    assert isinstance(low.layers[0], lorita.LowRankLinear)  # quantize_int8 copies by default


def test_saved_int8_round_trip_and_bytes_shrink(trained, tmp_path):
    dense, low, x, _ = trained
    q = quantize.quantize_int8(low)
    p_dense = lorita.save(dense, tmp_path / "merged.safetensors")
    p_low = lorita.save(low, tmp_path / "low.safetensors")
    p_q = quantize.save_quantized(q, tmp_path / "low_int8.pt", float_model=low)
    b_dense, b_low, b_q = (quantize.file_bytes(p) for p in (p_dense, p_low, p_q))
    w_dense = sum(p.numel() for p in dense.parameters())
    w_low = sum(p.numel() for p in low.parameters())
    assert b_dense >= 4 * w_dense and b_low >= 4 * w_low  # float32 on disk
    assert b_low < 0.3 * b_dense  # rank 24 keeps ~20% of the weights
    assert b_q < 0.45 * b_low  # int8 weights: ~1/4 of float32, plus scales and zip overhead
    # load into a freshly built dense model: the manifest rebuilds the low-rank layers
    loaded = quantize.load_quantized(FCN(hidden=(128, 128)), p_q)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x), atol=0, rtol=0)
    # and into the float low-rank model
    loaded2 = quantize.load_quantized(lorita.load(FCN(hidden=(128, 128)), p_low), p_q)
    with torch.no_grad():
        torch.testing.assert_close(loaded2(x), q(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="differ from the file's"):
        quantize.load_quantized(lorita.to_low_rank(dense, {"layers.0": 8}), p_q)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a lorita int8 file or is corrupt"):
        quantize.load_quantized(FCN(hidden=(128, 128)), tmp_path / "junk.pt")


def test_unavailable_quantization_fails_clearly(monkeypatch):
    def missing():
        raise RuntimeError(
            "int8 quantization needs torch.ao.quantization.quantize_dynamic, which this torch lacks"
        )

    monkeypatch.setattr(quantize, "_quantize_dynamic", missing)
    assert "quantize_dynamic" in quantize.int8_available()
    with pytest.raises(RuntimeError, match="quantize_dynamic"):
        quantize.quantize_int8(torch.nn.Linear(2, 2))


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.x = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, a):
        return self.head(self.x(a))


@pytest.fixture
def small_int8_files(tmp_path):
    torch.manual_seed(0)
    low = lorita.to_low_rank(FCN(hidden=(32, 32)), {"layers.0": 4, "layers.2": 4})
    with_ranks = quantize.save_quantized(quantize.quantize_int8(low), tmp_path / "low.pt", float_model=low)
    plain = quantize.save_quantized(quantize.quantize_int8(FCN(hidden=(32, 32))), tmp_path / "plain.pt")
    return with_ranks, plain


@pytest.mark.parametrize("which", ["with_ranks", "plain"])
def test_load_quantized_into_the_wrong_class_names_both_classes_and_the_fix(small_int8_files, which):
    path = small_int8_files[0 if which == "with_ranks" else 1]
    model = _Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        quantize.load_quantized(model, path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert "`ranks`" not in msg
    assert "the file holds a quantized FCN but the model passed is a _Net" in msg
    assert "pass a freshly built FCN with the configuration that was saved" in msg
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert type(model.x) is torch.nn.Linear


@pytest.mark.parametrize("which", ["with_ranks", "plain"])
def test_load_quantized_with_other_widths_is_a_shape_error_not_a_silent_load(small_int8_files, which):
    path = small_int8_files[0 if which == "with_ranks" else 1]
    key = "layers.0." + ("second." if which == "with_ranks" else "") + "_packed_params._packed_params"
    shape = "(32, 4)" if which == "with_ranks" else "(32, 784)"
    with pytest.raises(ValueError, match=rf"weights do not fit the FCN passed \(`{re.escape(key)}` has shape "
                                         rf"{re.escape(shape)} in the file but \(16, "):
        quantize.load_quantized(FCN(hidden=(16, 16)), path)
    x = torch.randn(3, 784)
    loaded = quantize.load_quantized(FCN(hidden=(32, 32)), path)  # the right one still loads
    assert loaded(x).shape == (3, 10)
    assert '"model_class": "FCN"' in torch.load(path, weights_only=True)["manifest"]


def test_quantize_int8_refuses_a_factorized_model_and_names_its_layers():
    from deploy_fixtures import TinyNet

    torch.manual_seed(0)
    fact = lorita.factorize(TinyNet(), depth=2)
    with pytest.raises(ValueError) as info:
        quantize.quantize_int8(fact)
    msg = str(info.value)
    assert msg.startswith("TinyNet still has factorized layers: `conv` (FactorizedConv2d), "
                          "`conv1d` (FactorizedConv1d), `attn` (FactorizedMultiheadAttention), "
                          "`fc` (FactorizedLinear);")
    assert "attn.in_proj" not in msg  # the projections inside the attention are not listed again
    assert "lorita.merge(model)" in msg and "lorita.to_low_rank(model, ranks)" in msg
    assert type(fact.fc) is lorita.FactorizedLinear  # untouched
    q = quantize.quantize_int8(lorita.merge(fact))  # the suggested fix works
    assert isinstance(q.fc, torch.ao.nn.quantized.dynamic.Linear)


def test_quantize_int8_with_nothing_to_quantize_is_an_error():
    convs = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"^Sequential has no nn\.Linear layer \(weight layers: BatchNorm2d, Conv2d\): "
                                         r".*nothing to quantize; keep the float model$"):
        quantize.quantize_int8(convs)
    with pytest.raises(TypeError, match="must be a torch.nn.Module, got str"):
        quantize.quantize_int8("model")
    # a bare Linear is quantized (quantize_dynamic alone would return it unchanged)
    lin = torch.nn.Linear(6, 3)
    q = quantize.quantize_int8(lin)
    assert isinstance(q, torch.ao.nn.quantized.dynamic.Linear) and type(lin) is torch.nn.Linear
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(q(x), lin(x), atol=0.05, rtol=0.05)

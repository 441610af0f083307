"""save/load: round trips of every form into a freshly built model; atomic, clear errors."""

import pytest
import torch

import lorita
from conftest import TinyCNN


@pytest.mark.parametrize("form", ["dense", "factorized", "low_rank"])
def test_round_trip_into_fresh_model(cnn, tmp_path, form):
    model = cnn
    if form == "factorized":
        model = lorita.factorize(cnn, depth=3)
    elif form == "low_rank":
        model = lorita.to_low_rank(cnn, {"conv2": 3, "head": 2})
    model.eval()
    path = lorita.save(model, tmp_path / "m.safetensors", metadata={"note": "x"})
    loaded = lorita.load(TinyCNN(), path).eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    man = lorita.read_manifest(path)
    assert man["metadata"] == {"note": "x"}
    if form == "low_rank":
        assert man["layers"]["head"] == {"form": "low_rank", "kind": "LowRankLinear", "rank": 2}
    if form == "factorized":
        assert man["layers"]["conv1"]["depth"] == 3
    assert not list(tmp_path.glob(".*tmp"))


def test_load_leaves_target_unchanged_on_mismatch(tmp_path, mlp):
    path = lorita.save(lorita.factorize(TinyCNN(), depth=2), tmp_path / "cnn.safetensors")
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    with pytest.raises(ValueError, match="not in TinyMLP"):
        lorita.load(mlp, path, inplace=True)
    assert all(torch.equal(mlp.state_dict()[k], v) for k, v in before.items())


def test_truncated_file_is_a_clear_error(tmp_path, cnn):
    path = lorita.save(cnn, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="m.safetensors"):
        lorita.load(TinyCNN(), path)

"""save/load survive the trip: every form round-trips exactly; truncated, corrupt, foreign or
mismatched files give one error naming the file, the layer and the fix, and leave the model
unchanged; writes are atomic."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import lorita
from deploy_fixtures import TinyNet, assert_same_state, state_copy, tiny_input
from lorita import io
from lorita.layers import FactorizedConv1d, LowRankConv1d
from lorita.layers.attention import FactorizedMultiheadAttention


def _forms() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    dense = TinyNet()
    fact = lorita.factorize(dense, depth=3)
    fact_chain = lorita.factorize(dense, depth=2, forward_mode="chain", target_modules=["fc", "conv"])
    merged = lorita.merge(fact)
    low = lorita.to_low_rank(merged, {"conv": 2, "conv1d": 3, "attn.in_proj": 2, "attn.out_proj": 4, "fc": 1})
    return {"dense": dense, "factorized": fact, "factorized_chain": fact_chain, "merged": merged, "low_rank": low}


FORMS = _forms()


@pytest.mark.parametrize("form", list(FORMS))
def test_round_trip_rebuilds_layers_and_outputs_are_identical(form, tmp_path):
    model = FORMS[form].eval()
    path = io.save(model, tmp_path / "m.safetensors", metadata={"note": form})
    fresh = TinyNet()
    loaded = lorita.load(fresh, path).eval()
    x = tiny_input()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))  # bit-identical
    for (n1, m1), (n2, m2) in zip(model.named_modules(), loaded.named_modules(), strict=True):
        assert n1 == n2 and type(m1) is type(m2)
    assert lorita.read_manifest(path)["metadata"] == {"note": form}
    assert type(fresh.conv) is nn.Conv2d  # inplace=False: the fresh instance is untouched


def test_manifest_records_each_form():
    low = io.manifest_of(FORMS["low_rank"])["layers"]
    assert low["conv1d"] == {"form": "low_rank", "kind": "LowRankConv1d", "rank": 3}
    assert "attn" not in low  # attention stays dense in the low-rank form
    fact = io.manifest_of(FORMS["factorized"])["layers"]
    assert fact["attn"] == {"form": "factorized", "kind": "FactorizedMultiheadAttention", "depth": 3}
    assert "attn.in_proj" not in fact  # inside the attention layer
    chain = io.manifest_of(FORMS["factorized_chain"])["layers"]
    assert chain["fc"]["forward_mode"] == "chain"


def test_load_inplace_rebuilds_the_given_instance(tmp_path):
    path = io.save(FORMS["factorized"], tmp_path / "f.safetensors")
    target = TinyNet()
    out = lorita.load(target, path, inplace=True)
    assert out is target
    assert isinstance(target.attn, FactorizedMultiheadAttention) and isinstance(target.conv1d, FactorizedConv1d)
    assert isinstance(lorita.load(TinyNet(), io.save(FORMS["low_rank"], tmp_path / "l.safetensors")).conv1d,
                      LowRankConv1d)


class _Other(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)


def _write_with_manifest(path: Path, tensors: dict[str, torch.Tensor], manifest: object) -> Path:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    save_file(tensors, str(path), metadata={"lorita": text})
    return path


def _good(tmp_path: Path, form: str = "factorized") -> Path:
    return io.save(FORMS[form], tmp_path / f"{form}.safetensors")


def _manifest_edit(tmp_path: Path, edit) -> Path:
    src = _good(tmp_path)
    manifest = lorita.read_manifest(src)
    edit(manifest)
    from safetensors.torch import load_file

    return _write_with_manifest(tmp_path / "edited.safetensors", load_file(str(src)), manifest)


def _truncated(tmp_path: Path) -> Path:
    data = _good(tmp_path).read_bytes()
    p = tmp_path / "cut.safetensors"
    p.write_bytes(data[: len(data) // 2])
    return p


def _garbage(tmp_path: Path) -> Path:
    p = tmp_path / "garbage.safetensors"
    p.write_bytes(b"\x00\x01not a safetensors file" * 10)
    return p


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "empty.safetensors"
    p.write_bytes(b"")
    return p


def _flipped_header(tmp_path: Path) -> Path:
    data = bytearray(_good(tmp_path).read_bytes())
    data[10:30] = b"#" * 20  # inside the JSON header
    p = tmp_path / "flipped.safetensors"
    p.write_bytes(bytes(data))
    return p


def _bit_flip(tmp_path: Path) -> Path:
    data = bytearray(_good(tmp_path).read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's data: same size, valid header
    p = tmp_path / "flip.safetensors"
    p.write_bytes(bytes(data))
    return p


def _pickle(tmp_path: Path) -> Path:
    p = tmp_path / "model.pt"
    torch.save(TinyNet().state_dict(), p)
    return p


def _plain(tmp_path: Path) -> Path:
    p = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in TinyNet().state_dict().items()}, str(p))
    return p


def _other_model(tmp_path: Path) -> Path:
    return io.save(lorita.factorize(_Other(), depth=2), tmp_path / "other.safetensors")


def _other_shape(tmp_path: Path) -> Path:
    class Wider(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 5)

    return io.save(Wider(), tmp_path / "wider.safetensors")


def _set_depth(m):
    m["layers"]["fc"]["depth"] = 4


def _set_kind(m):
    m["layers"]["fc"]["kind"] = "FactorizedConv2d"


def _set_unknown(m):
    m["layers"]["fc"]["kind"] = "FactorizedTensorTrain"


def _newer(m):
    m["format_version"] = 99


def _drop_layer(m):
    del m["layers"]["conv1d"]


# (id, file maker, exception, message regex) — every message names the file and the fix
BAD_FILES = [
    ("missing", lambda t: t / "nope.safetensors", FileNotFoundError, r"no checkpoint at .*nope\.safetensors; check"),
    ("directory", lambda t: t, ValueError, r"is a directory; pass the \.safetensors file inside it"),
    ("truncated", _truncated, ValueError,
     r"cut\.safetensors is not a readable safetensors file .*truncated or corrupt"),
    ("garbage", _garbage, ValueError, r"garbage\.safetensors is not a readable safetensors file"),
    ("empty", _empty, ValueError, r"empty\.safetensors is not a readable safetensors file"),
    ("corrupt_header", _flipped_header, ValueError, r"flipped\.safetensors is not a readable safetensors file"),
    ("bit_flip", _bit_flip, ValueError,
     r"flip\.safetensors: layer `\w+`: the data of `[\w.]+` does not match the checksum stored when it was saved"),
    ("pickle", _pickle, ValueError, r"model\.pt is not a readable safetensors file"),
    ("no_manifest", _plain, ValueError, r"plain\.safetensors has no lorita manifest.*load_model"),
    ("bad_json", lambda t: _write_with_manifest(t / "j.safetensors", {"a": torch.zeros(1)}, "{oops"), ValueError,
     r"j\.safetensors: the lorita manifest is not valid JSON"),
    ("not_a_manifest", lambda t: _write_with_manifest(t / "n.safetensors", {"a": torch.zeros(1)}, [1, 2]),
     ValueError, r"n\.safetensors: malformed lorita manifest"),
    ("newer_format", lambda t: _manifest_edit(t, _newer), ValueError,
     r"edited\.safetensors uses lorita file format 99.*upgrade"),
    ("other_model", _other_model, ValueError,
     r"other\.safetensors: layer `body` from the manifest is not in TinyNet; the file was saved from another model"),
    ("other_shape", _other_shape, ValueError,
     r"wider\.safetensors: layer `fc`: `fc\.weight` has shape \(5, 8\) in the file but \(3, 8\).*configuration"),
    ("depth_mismatch", lambda t: _manifest_edit(t, _set_depth), ValueError,
     r"edited\.safetensors: layer `fc`: `fc\.factors\.2` has shape \(3, 8\) in the file but \(8, 8\) in TinyNet "
     r"\(the manifest says `fc` is FactorizedLinear depth 4\)"),
    ("kind_mismatch", lambda t: _manifest_edit(t, _set_kind), ValueError,
     r"layer `fc` is a Linear in the model but the file holds a FactorizedConv2d.*freshly built"),
    ("unknown_kind", lambda t: _manifest_edit(t, _set_unknown), ValueError,
     r"layer `fc` has unknown kind 'FactorizedTensorTrain'"),
    ("manifest_missing_layer", lambda t: _manifest_edit(t, _drop_layer), ValueError,
     r"edited\.safetensors: layer `conv1d`: key `conv1d\.weight`: the model has it but the file does not"),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_files_raise_one_clear_error_and_leave_the_model_unchanged(case, tmp_path):
    _, make, exc, pattern = case
    path = make(tmp_path)
    model = TinyNet()
    before = state_copy(model)
    types = [type(m) for m in model.modules()]
    for inplace in (False, True):
        with pytest.raises(exc, match=pattern) as info:
            lorita.load(model, path, inplace=inplace)
        assert "\n" not in str(info.value)  # one line
        assert_same_state(model, before)
        assert [type(m) for m in model.modules()] == types


def test_shape_error_names_the_saved_class_when_it_differs(tmp_path):
    class Renamed(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 7)

    path = io.save(Renamed(), tmp_path / "r.safetensors")
    with pytest.raises(ValueError, match=r"saved from a Renamed, not a TinyNet"):
        lorita.load(TinyNet(), path)


# ---- atomic writes ------------------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if re.search(r"\.tmp", p.name))


def test_failed_save_leaves_no_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    io.save(FORMS["dense"], path)
    good = path.read_bytes()

    def boom(model, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_model", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save(FORMS["factorized"], path)
    assert path.read_bytes() == good  # the old file is intact
    with pytest.raises(OSError):
        io.save(FORMS["factorized"], tmp_path / "new.safetensors")
    assert not (tmp_path / "new.safetensors").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "args, exc, pattern",
    [
        (lambda t: (FORMS["dense"], t / "m.safetensors", {"bad": object()}), TypeError, "JSON-serializable"),
        (lambda t: (FORMS["dense"], t / "m.safetensors", {"bad": float("nan")}), TypeError, "JSON-serializable"),
        (lambda t: (FORMS["dense"], t), ValueError, "is a directory; give a file path"),
        (lambda t: ({"w": 1}, t / "m.safetensors"), TypeError, "must be a torch.nn.Module"),
    ],
    ids=["metadata_object", "metadata_nan", "directory", "not_a_module"],
)
def test_save_rejects_bad_arguments_before_writing(args, exc, pattern, tmp_path):
    with pytest.raises(exc, match=pattern):
        io.save(*args(tmp_path))
    assert not (tmp_path / "m.safetensors").exists()
    assert _leftovers(tmp_path) == []


def test_save_under_a_file_parent_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="a parent of it is a file, not a folder"):
        io.save(FORMS["dense"], tmp_path / "afile" / "m.safetensors")


def test_saved_file_has_normal_permissions(tmp_path):
    path = io.save(FORMS["dense"], tmp_path / "m.safetensors")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what a plain open() gives under the current umask
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_every_torch_load_in_the_package_is_weights_only():
    src = Path(lorita.__file__).parent
    calls = []
    for f in src.glob("*.py"):
        for m in re.finditer(r"torch\.load\((.*?)\)\n", f.read_text(), flags=re.S):
            calls.append((f.name, m.group(1)))
    assert calls, "expected the resume path to use torch.load"
    for name, args in calls:
        assert "weights_only=True" in args, name


@pytest.mark.parametrize("form", ["factorized", "low_rank"])
@pytest.mark.parametrize("file_form", ["dense", "factorized"])
def test_load_into_an_already_factorized_model_says_to_pass_a_fresh_one(form, file_form, tmp_path):
    path = io.save(FORMS[file_form], tmp_path / "m.safetensors")
    model = lorita.factorize(TinyNet(), depth=2) if form == "factorized" else lorita.to_low_rank(
        TinyNet(), {"conv": 2, "fc": 1})
    before = state_copy(model)
    kind = "FactorizedConv2d" if form == "factorized" else "LowRankConv2d"
    for inplace in (False, True):
        with pytest.raises(ValueError) as info:
            lorita.load(model, path, inplace=inplace)
        msg = str(info.value)
        assert "\n" not in msg
        assert re.search(rf"m\.safetensors: layer `conv` of the model passed is already a {kind} \(and \d+ more\)", msg)
        assert "freshly built, unmodified instance of TinyNet" in msg and "rebuilds" in msg
        assert_same_state(model, before)

"""`lorita train --init-from`: start a depth-N run from a plain model's dense weights."""

import pytest
import torch
from safetensors.torch import save_model

import lorita
from lorita.cli import main
from lorita.models import FCN
from lorita.runs.config import TrainConfig
from lorita.runs.folder import load_data
from lorita.runs.train import build_training_model, train_run

KW = {"hidden": [32]}
SMALL = dict(model="fcn", model_kwargs=KW, limit_train=600, val_size=200, epochs=1, batch_size=100)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "d1"
    train_run(TrainConfig(**SMALL, depth=1), out, progress=False)
    return out, lorita.load(FCN(hidden=KW["hidden"]), out / "model.safetensors")


@pytest.mark.parametrize("init", ["balanced", "preserve"])
def test_depth3_from_a_depth1_run_equals_the_source_at_step_0(source, init):
    run, plain = source
    cfg = TrainConfig(**SMALL, depth=3, init=init, init_from=str(run))
    model = build_training_model(cfg, load_data(cfg))
    assert isinstance(model.layers[0], lorita.FactorizedLinear) and model.layers[0].depth == 3
    merged = lorita.merge(model).state_dict()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(merged[key], value, atol=2e-6, rtol=1e-5)


def test_plain_safetensors_file_and_errors(source, tmp_path):
    _, plain = source
    f = tmp_path / "plain.safetensors"
    save_model(plain, str(f))
    cfg = TrainConfig(**SMALL, depth=2, init="preserve", init_from=str(f))
    merged = lorita.merge(build_training_model(cfg, load_data(cfg)))
    torch.testing.assert_close(merged.layers[0].weight, plain.layers[0].weight, atol=0, rtol=0)
    with pytest.raises(ValueError, match="`init`='default'"):
        build_training_model(TrainConfig(**SMALL, depth=2, init="default", init_from=str(f)))
    wide = TrainConfig(**{**SMALL, "model_kwargs": {"hidden": [48]}}, depth=2, init_from=str(f))
    with pytest.raises(ValueError, match="`init_from`"):
        build_training_model(wide, load_data(wide))
    with pytest.raises(FileNotFoundError, match="`init_from`"):
        build_training_model(TrainConfig(**SMALL, depth=2, init_from=str(tmp_path / "nope.safetensors")))


def test_cli_init_from_trains(source, tmp_path, capsys):
    run, _ = source
    rc = main(["--no-progress", "train", "--model-kwargs", '{"hidden": [32]}', "--limit-train", "600",
               "--val-size", "200", "--epochs", "1", "--batch-size", "100", "--depth", "3",
               "--init-from", str(run), "--lr", "0.01", "--out", str(tmp_path / "ft")])
    assert rc == 0 and "val acc" in capsys.readouterr().out
    assert TrainConfig.load(tmp_path / "ft" / "config.json").init_from == str(run)

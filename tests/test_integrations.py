"""The PyTorch Lightning and Hugging Face Trainer examples run: the factors train, the merged
model is the original class and computes what the factorized one did. Skipped when the optional
packages are missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import lorita

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.filterwarnings("ignore")
def test_lightning_example_trains_factors_and_merges():
    pytest.importorskip("lightning")
    ex = _load("lightning_lorita")
    fact, dense = ex.run(steps=3, seed=0)
    assert isinstance(fact[1], lorita.FactorizedLinear)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), fact(x), rtol=1e-5, atol=1e-6)
    ex.plain_model().load_state_dict(dense.state_dict(), strict=True)
    import lightning as L

    L.seed_everything(0, verbose=False)  # as run() does before factorizing: the same initial factors
    start = lorita.factorize(ex.plain_model(), depth=3)
    assert not torch.equal(start[1].factors[0], fact[1].factors[0])  # the optimizer moved the factors


@pytest.mark.filterwarnings("ignore")
def test_hf_trainer_example_trains_merges_and_round_trips_save_pretrained(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    transformers.logging.set_verbosity_error()
    ex = _load("hf_trainer_lorita")
    fact, dense = ex.run(tmp_path, steps=3)
    assert isinstance(fact.bert.encoder.layer[0].attention.self.query, lorita.FactorizedLinear)
    assert type(dense.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(dense(ids).logits, fact(ids).logits, rtol=1e-5, atol=1e-6)
        back = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(back(ids).logits, dense(ids).logits, rtol=0, atol=0)

"""Surgery edge cases (issue 12, item 5): tied weights given explicit ranks, and the root module.

Judgement call for the root: ``named_modules()`` names the root ``""``, and every lorita
function returns the (possibly new) model, so a bare layer is handled as its own target —
``to_low_rank(nn.Linear(64, 64), {"": 4})`` returns a ``LowRankLinear`` — rather than refused.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorita


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.body = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 50, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        return self.lm_head(torch.relu(self.body(self.embed(ids))))


@pytest.mark.parametrize("fn", [lorita.to_low_rank, lorita.truncate])
def test_tied_lm_head_is_refused_naming_both_modules(fn):
    m = TiedLM()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"`lm_head`.*shared with `embed`") as err:
        fn(m, {"lm_head": 4})
    assert "drop `lm_head` from `ranks`" in str(err.value)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])
    assert m.lm_head.weight is m.embed.weight
    # the untied layers still go through, and select_ranks skips the tied head as before
    ranks = lorita.select_ranks(m, lorita.FixedRank(4))
    assert set(ranks) == {"body"}
    assert isinstance(lorita.to_low_rank(m, ranks).body, lorita.LowRankLinear)


def test_module_registered_twice_is_refused():
    shared = nn.Linear(16, 16)
    m = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(ValueError, match=r"`0`: the same module object is also registered as `2`"):
        lorita.to_low_rank(m, {"0": 2})


def test_root_linear_to_low_rank_returns_the_low_rank_layer():
    lin = nn.Linear(64, 64)
    x = torch.randn(5, 64)
    low = lorita.to_low_rank(lin, {"": 4})
    assert isinstance(low, lorita.LowRankLinear) and low.rank == 4
    assert type(lin) is nn.Linear  # input untouched
    trunc = lorita.truncate(lin, {"": 4})
    assert type(trunc) is nn.Linear
    assert torch.linalg.matrix_rank(trunc.weight.detach()) == 4
    torch.testing.assert_close(low(x), trunc(x), atol=1e-5, rtol=0)
    # inplace: the root cannot change class, the new layer is returned
    assert isinstance(lorita.to_low_rank(lin, {"": 4}, inplace=True), lorita.LowRankLinear)
    back = lorita.merge(low)
    assert type(back) is nn.Linear
    torch.testing.assert_close(back(x), trunc(x), atol=1e-5, rtol=0)


def test_root_layer_through_select_ranks_factorize_and_merge():
    lin = nn.Linear(64, 32)
    assert lorita.select_ranks(lin, lorita.FixedRank(4)) == {"": 4}
    fact = lorita.factorize(lin, depth=3, init="preserve")
    assert isinstance(fact, lorita.FactorizedLinear) and fact.depth == 3
    x = torch.randn(3, 64)
    torch.testing.assert_close(fact(x), lin(x), atol=1e-5, rtol=0)
    merged = lorita.merge(fact)
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged.weight, lin.weight, atol=1e-6, rtol=0)


def test_root_multihead_attention():
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    ranks = lorita.select_ranks(mha, lorita.FixedRank(8))
    assert ranks == {"in_proj": 8, "out_proj": 8}
    low = lorita.to_low_rank(mha, ranks)
    assert torch.linalg.matrix_rank(low.out_proj.weight.detach()) == 8
    fact = lorita.factorize(mha, depth=2, init="preserve")
    assert isinstance(fact, lorita.FactorizedMultiheadAttention)
    back = lorita.merge(fact)
    assert type(back) is nn.MultiheadAttention
    torch.testing.assert_close(back.in_proj_weight, mha.in_proj_weight, atol=1e-6, rtol=0)


def test_root_low_rank_layer_saves_and_loads(tmp_path):
    low = lorita.to_low_rank(nn.Linear(64, 64), {"": 4})
    path = lorita.save(low, tmp_path / "layer.safetensors")
    again = lorita.load(nn.Linear(64, 64), path)
    assert isinstance(again, lorita.LowRankLinear) and again.rank == 4
    x = torch.randn(3, 64)
    torch.testing.assert_close(again(x), low(x), atol=0, rtol=0)
    fact = lorita.factorize(nn.MultiheadAttention(16, 2), depth=2)
    path = lorita.save(fact, tmp_path / "attn.safetensors")
    assert list(lorita.read_manifest(path)["layers"]) == [""]
    assert isinstance(lorita.load(nn.MultiheadAttention(16, 2), path), lorita.FactorizedMultiheadAttention)

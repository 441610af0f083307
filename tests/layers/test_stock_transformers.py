"""Stock PyTorch transformer modules after to_low_rank / in search (issue 12, item 1).

In eval mode ``nn.TransformerEncoderLayer`` (and ``nn.TransformerEncoder`` with a padding mask)
may run a fused kernel that reads ``linear1.weight`` etc.; a layer holding a lorita layer must
take the standard path instead and compute what ``truncate`` computes. Tolerance: float32,
``atol=1e-5`` (the fused and the standard path round differently; measured ≈ 6e-7).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorita
from lorita.layers.fastpath import sync_fast_paths

ATOL = 1e-5


def _encoder(nested: bool = True) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested).eval()


def _ranks(model: nn.Module) -> dict[str, int]:
    return lorita.select_ranks(model, lorita.RankRatio(0.25))


def _pair(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    ranks = _ranks(model)
    return lorita.truncate(model, ranks), lorita.to_low_rank(model, ranks)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def test_encoder_eval_equals_truncate():
    enc = _encoder()
    x = torch.randn(3, 7, 32)
    trunc, low = _pair(enc)
    assert isinstance(low.layers[0].linear1, lorita.LowRankLinear)
    with torch.no_grad():
        want, got = trunc(x), low(x)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_encoder_with_padding_mask_equals_truncate_on_valid_positions():
    # With a padding mask the stock encoder converts to a nested tensor and reads the first
    # layer's dense weights; the result at padded positions is 0 there (PyTorch's nested
    # path) and computed by the standard path, so only the valid positions are compared.
    enc = _encoder()
    x = torch.randn(3, 7, 32)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 5:] = True
    mask[2, 3:] = True
    trunc, low = _pair(enc)
    assert low.use_nested_tensor is False
    with torch.no_grad():
        want, got = trunc(x, src_key_padding_mask=mask), low(x, src_key_padding_mask=mask)
    torch.testing.assert_close(got[~mask], want[~mask], atol=ATOL, rtol=0)


def test_encoder_layer_alone_and_decoder_layer_equal_truncate():
    x, mem = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    enc = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    trunc, low = _pair(enc)
    with torch.no_grad():
        torch.testing.assert_close(low(x), trunc(x), atol=ATOL, rtol=0)
    dec = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    trunc, low = _pair(dec)
    assert isinstance(low.linear2, lorita.LowRankLinear)
    with torch.no_grad():
        torch.testing.assert_close(low(x, mem), trunc(x, mem), atol=ATOL, rtol=0)


def test_full_transformer_and_multihead_attention_equal_truncate():
    src, tgt = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    tr = nn.Transformer(32, 4, 1, 1, 64, dropout=0.0, batch_first=True).eval()
    trunc, low = _pair(tr)
    with torch.no_grad():
        torch.testing.assert_close(low(src, tgt), trunc(src, tgt), atol=ATOL, rtol=0)

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    m = Attn().eval()
    trunc, low = _pair(m)
    # attention projections are truncated in place (the forward takes packed tensors): dense.
    assert type(low.attn) is nn.MultiheadAttention
    assert torch.linalg.matrix_rank(low.attn.out_proj.weight.detach()) == 8
    with torch.no_grad():
        torch.testing.assert_close(low(src), trunc(src), atol=ATOL, rtol=0)


def test_merge_restores_the_fast_path_switches():
    enc = _encoder()
    before = (enc.use_nested_tensor, enc.layers[0].activation_relu_or_gelu)
    assert before == (True, 1)
    low = lorita.to_low_rank(enc, _ranks(enc))
    assert (low.use_nested_tensor, low.layers[0].activation_relu_or_gelu) == (False, 0)
    back = lorita.merge(low)
    assert (back.use_nested_tensor, back.layers[0].activation_relu_or_gelu) == before
    assert "_lorita_fastpath" not in back.layers[0].__dict__
    # an encoder built without nested tensors stays without them
    plain = _encoder(nested=False)
    back = lorita.merge(lorita.to_low_rank(plain, _ranks(plain)))
    assert back.use_nested_tensor is False
    # the user's original is untouched (to_low_rank works on a copy)
    assert (enc.use_nested_tensor, enc.layers[0].activation_relu_or_gelu) == before


def test_factorized_encoder_eval_works_and_merges_back():
    enc = _encoder()
    fact = lorita.factorize(enc, depth=2, target_modules=["linear1", "linear2"], init="preserve").eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(fact(x), enc(x), atol=ATOL, rtol=0)
    assert lorita.merge(fact).layers[1].activation_relu_or_gelu == 1


def test_save_load_round_trip_of_low_rank_encoder(tmp_path):
    enc = _encoder()
    low = lorita.to_low_rank(enc, _ranks(enc))
    path = lorita.save(low, tmp_path / "enc.safetensors")
    again = lorita.load(_encoder(), path).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), low(x), atol=ATOL, rtol=0)


def test_sync_fast_paths_by_hand():
    enc = _encoder()
    enc.layers[0].linear1 = lorita.LowRankLinear.from_dense(enc.layers[0].linear1, 4)
    sync_fast_paths(enc)
    assert enc.layers[0].activation_relu_or_gelu == 0 and enc.layers[1].activation_relu_or_gelu == 1
    with torch.no_grad():
        enc(torch.randn(2, 5, 32))


class _Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = _encoder()
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.enc(x).mean(1))


@pytest.mark.parametrize("start", [None, lorita.RankRatio(0.5)])
def test_search_on_stock_encoder(start):
    model = _Classifier().eval()
    x = torch.randn(16, 5, 32)
    with torch.no_grad():
        y = model(x).argmax(1)

    def evaluate(m):
        m.eval()
        with torch.no_grad():
            out = m(x)
        return {"loss": float(nn.functional.cross_entropy(out, y)), "acc": float((out.argmax(1) == y).float().mean())}

    cfg = lorita.GreedySearch(tolerance=100.0, max_commits=2, initial_step=8, start=start)
    res = lorita.search(model, evaluate, cfg, example_inputs=x[:2], target_modules=r".*linear\d")
    low = [n for n, m in res.model.named_modules() if isinstance(m, lorita.LowRankLinear)]
    assert low, res.forms
    want = lorita.truncate(model, res.ranks)
    with torch.no_grad():
        torch.testing.assert_close(res.model.eval()(x), want(x), atol=ATOL, rtol=0)

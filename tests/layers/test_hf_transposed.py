"""Hugging Face transformers attention projections through `target_modules` (BERT, ViT, GPT-2),
on tiny models built from a config offline. Skipped when `transformers` is not installed."""

from __future__ import annotations

import pytest
import torch

import lorita
from lorita.layers.transposed import FactorizedTransposedLinear, LowRankTransposedLinear

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

IDS = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))


def _gpt2():
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _bert():
    cfg = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, vocab_size=50, max_position_embeddings=16)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def _vit():
    cfg = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, image_size=8, patch_size=4, num_channels=3)
    torch.manual_seed(0)
    return transformers.ViTModel(cfg).eval()


def _out(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _vit_targets(model) -> list[str]:
    # attention projection names differ between transformers versions
    names = [n for n, _ in model.named_modules()]
    new = ["q_proj", "k_proj", "v_proj", "o_proj"]
    return new if any(n.endswith(".q_proj") for n in names) else ["query", "key", "value", "attention.output.dense"]


CASES = [
    ("bert", _bert, IDS, lambda m: ["query", "key", "value", "attention.output.dense"], 4),
    ("vit", _vit, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), _vit_targets, 4),
    ("gpt2", _gpt2, IDS, lambda m: ["c_attn", "attn.c_proj"], 2),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_attention_projections_factorize_merge_and_truncate(case, tmp_path):
    _, build, x, targets, n_targets = case
    model = build()
    tm = targets(model)
    plan = lorita.factorize_plan(model, target_modules=tm)
    assert len(plan.names) == n_targets
    fact = lorita.factorize(model, depth=3, target_modules=tm).eval()
    dense = lorita.merge(fact).eval()
    torch.testing.assert_close(_out(dense, x), _out(fact, x), rtol=1e-5, atol=1e-5)
    fresh = build()
    fresh.load_state_dict(dense.state_dict(), strict=True)  # original HF class, same keys and shapes
    ranks = lorita.select_ranks(dense, lorita.FixedRank(3), target_modules=tm)
    assert set(ranks) == set(plan.names)
    trunc = lorita.truncate(dense, ranks).eval()
    low = lorita.to_low_rank(dense, ranks).eval()
    torch.testing.assert_close(_out(low, x), _out(trunc, x), rtol=1e-4, atol=1e-5)
    for form, m in (("low", low), ("fact", fact)):
        path = lorita.save(m, tmp_path / f"{form}.safetensors")
        back = lorita.load(build(), path).eval()
        assert torch.equal(_out(back, x), _out(m, x)), form


def test_gpt2_conv1d_is_read_transposed_and_merges_back_to_conv1d():
    model = _gpt2()
    c_attn = model.transformer.h[0].attn.c_attn  # weight (in=16, out=48)
    assert tuple(c_attn.weight.shape) == (16, 48)
    S = lorita.singular_values(model, target_modules=["c_attn"])["transformer.h.0.attn.c_attn"]
    torch.testing.assert_close(S, torch.linalg.svdvals(c_attn.weight.detach().T))
    fact = lorita.factorize(model, depth=2, target_modules=["c_attn"])
    f = fact.transformer.h[0].attn.c_attn
    assert isinstance(f, FactorizedTransposedLinear) and tuple(f.factors[-1].shape) == (48, 16)
    assert type(lorita.merge(fact).transformer.h[0].attn.c_attn) is type(c_attn)
    low = lorita.to_low_rank(model, {"transformer.h.0.attn.c_attn": 4})
    lr = low.transformer.h[0].attn.c_attn
    assert isinstance(lr, LowRankTransposedLinear) and lr.rank == 4
    assert type(lr.to_dense()) is type(c_attn)
    torch.testing.assert_close(lorita.effective_weight(lr), lr.second.weight @ lr.first.weight)  # (out, in)
    assert lorita.singular_values(low, target_modules=["c_attn"])["transformer.h.0.attn.c_attn"].shape == (16,)
    rep = lorita.count_macs(low, IDS)  # per sample: 6 tokens × rank·(in + out)
    assert rep.row("transformer.h.0.attn.c_attn").macs == 6 * 4 * (16 + 48)
    assert lorita.count_macs(model, IDS).row("transformer.h.0.attn.c_attn").macs == 6 * 16 * 48


def test_gpt2_tied_lm_head_is_skipped_with_a_reason():
    model = _gpt2()
    plan = lorita.factorize_plan(model)
    assert plan.skipped["lm_head"] == "weight is shared with `transformer.wte`"
    fact = lorita.factorize(model, depth=2)
    assert fact.lm_head.weight is fact.transformer.wte.weight  # still tied

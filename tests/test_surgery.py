"""Model surgery: factorize → merge exactness, strict loads, copies, atomicity, targeting."""

import copy
import logging

import pytest
import torch
from torch import nn

import lorita
from conftest import TinyCNN, TinyMLP
from lorita import FactorizedConv2d, FactorizedLinear, LowRankConv2d, LowRankLinear


def _train_a_bit(model, x, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_merge_is_exact_on_cnn_with_batchnorm_and_loads_strictly(cnn, depth):
    x = torch.randn(4, 3, 8, 8)
    fact = _train_a_bit(lorita.factorize(cnn, depth=depth), x)
    want = fact(x)
    dense = lorita.merge(fact)
    assert {type(m) for m in dense.modules()} == {type(m) for m in cnn.modules()}
    torch.testing.assert_close(dense(x), want, atol=1e-5, rtol=1e-5)
    fresh = TinyCNN()
    fresh.load_state_dict(dense.state_dict(), strict=True)
    fresh.eval()
    torch.testing.assert_close(fresh(x), want, atol=1e-5, rtol=1e-5)
    assert set(dense.state_dict()) == set(cnn.state_dict())


def test_merge_is_exact_on_mlp(mlp):
    x = torch.randn(5, 12)
    fact = _train_a_bit(lorita.factorize(mlp, depth=3), x)
    dense = lorita.merge(fact)
    torch.testing.assert_close(dense(x), fact(x), atol=1e-5, rtol=1e-5)
    TinyMLP().load_state_dict(dense.state_dict(), strict=True)


def test_factorize_replaces_the_right_layers_with_paper_shapes(cnn):
    fact = lorita.factorize(cnn, depth=3)
    assert isinstance(fact.conv1, FactorizedConv2d) and isinstance(fact.head, FactorizedLinear)
    assert [tuple(f.shape) for f in fact.head.factors] == [(192, 192), (192, 192), (6, 192)]
    assert fact.conv2.stride == (2, 2) and fact.conv2.dilation == (2, 2) and fact.conv2.padding == (2, 2)
    assert isinstance(fact.bn1, nn.BatchNorm2d)


def test_preserve_init_computes_the_same_function(cnn):
    cnn.eval()
    x = torch.randn(2, 3, 8, 8)
    fact = lorita.factorize(cnn, depth=3, init="preserve").eval()
    torch.testing.assert_close(fact(x), cnn(x), atol=1e-5, rtol=1e-5)


def test_depth_one_is_a_no_op_copy(mlp):
    out = lorita.factorize(mlp, depth=1)
    assert out is not mlp
    assert all(type(a) is type(b) for a, b in zip(out.modules(), mlp.modules()))
    for k, v in mlp.state_dict().items():
        torch.testing.assert_close(out.state_dict()[k], v, atol=0, rtol=0)


def test_inplace_false_leaves_input_untouched_and_inplace_true_modifies(mlp):
    before = copy.deepcopy(mlp.state_dict())
    out = lorita.factorize(mlp, depth=2)
    assert out is not mlp and isinstance(mlp.net[0], nn.Linear)
    for k, v in before.items():
        assert torch.equal(mlp.state_dict()[k], v)
    out2 = lorita.factorize(mlp, depth=2, inplace=True)
    assert out2 is mlp and isinstance(mlp.net[0], FactorizedLinear)


def test_targeting_regex_list_and_exclude(cnn):
    f = lorita.factorize(cnn, depth=2, target_modules=r"conv\d")
    assert isinstance(f.conv1, FactorizedConv2d) and isinstance(f.head, nn.Linear)
    f = lorita.factorize(cnn, depth=2, target_modules=["head", "conv2"])
    assert isinstance(f.conv2, FactorizedConv2d) and isinstance(f.conv1, nn.Conv2d)
    f = lorita.factorize(cnn, depth=2, exclude_modules=["head"])
    assert isinstance(f.conv1, FactorizedConv2d) and isinstance(f.head, nn.Linear)
    f = lorita.factorize(cnn, depth=2, filter_fn=lambda m, name: isinstance(m, nn.Linear))
    assert isinstance(f.head, FactorizedLinear) and isinstance(f.conv1, nn.Conv2d)


def _unmatched_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lorita.targeting" and r.levelno == logging.WARNING]


def test_exclude_or_target_entry_matching_nothing_is_a_warning_naming_it(cnn, caplog):
    with caplog.at_level(logging.WARNING, logger="lorita.targeting"):
        f = lorita.factorize(cnn, depth=2, exclude_modules=["haed"])
    assert isinstance(f.head, FactorizedLinear)  # excluding nothing is not an error
    assert _unmatched_warnings(caplog) == [
        "`exclude_modules` entry 'haed' matches no module of TinyCNN; check the spelling (a regex full-matching "
        "the module name, or a list of names/suffixes). Module names: [conv1, bn1, conv2, bn2, head]"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lorita.targeting"):
        lorita.factorize(cnn, depth=2, exclude_modules=r"haed|conv9")  # a regex
        f = lorita.factorize(cnn, depth=2, target_modules=["head", "conv3", "cnv1"])
    assert isinstance(f.head, FactorizedLinear) and type(f.conv1) is nn.Conv2d
    got = _unmatched_warnings(caplog)
    assert len(got) == 2
    assert got[0].startswith("`exclude_modules` entry 'haed|conv9' matches no module of TinyCNN;")
    assert got[1].startswith("`target_modules` entries 'conv3', 'cnv1' match no module of TinyCNN;")


def test_patterns_that_match_something_never_warn(cnn, caplog):
    from deploy_fixtures import TinyNet

    with caplog.at_level(logging.WARNING, logger="lorita.targeting"):
        lorita.factorize(cnn, depth=2, exclude_modules=["bn1"])  # a BatchNorm: matched, just not a target
        lorita.factorize(cnn, depth=2, exclude_modules=r"bn\d|head", target_modules=["conv1", "bn2"])
        lorita.factorize(cnn, depth=2, exclude_modules=r"conv.*")
        net = TinyNet()
        lorita.singular_values(net, target_modules=["attn.in_proj", "fc"])  # attention projection names
        lorita.singular_values(lorita.factorize(net, depth=2), exclude_modules=["in_proj"])
        with pytest.raises(ValueError, match="no .* matched"):  # nothing at all: still the error
            lorita.factorize(cnn, depth=2, target_modules=["encoder"])
    assert _unmatched_warnings(caplog) == []


def test_empty_target_match_is_an_error_listing_candidates(cnn):
    with pytest.raises(ValueError, match=r"no .*layers.* matched .*Candidates: \[conv1, conv2, head\]"):
        lorita.factorize(cnn, depth=2, target_modules="encoder.*")


def test_invalid_regex_is_reported(cnn):
    with pytest.raises(ValueError, match="not a valid regular expression"):
        lorita.factorize(cnn, depth=2, target_modules="conv[")


def test_grouped_conv_is_skipped_with_reason(caplog):
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 6, 1))
    with caplog.at_level(logging.WARNING, logger="lorita.surgery"):
        f = lorita.factorize(model, depth=2)
    assert type(f[0]) is nn.Conv2d and isinstance(f[1], FactorizedConv2d)
    assert "groups=2" in caplog.text and "`0`" in caplog.text
    plan = lorita.factorize_plan(model)
    assert plan.names == ["1"] and "groups=2" in plan.skipped["0"]


def test_tied_weights_are_skipped_with_reason():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight
            self.c = nn.Linear(4, 2)

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    plan = lorita.factorize_plan(Tied())
    assert plan.names == ["c"] and "shared with `b`" in plan.skipped["a"]


@pytest.mark.parametrize("depth", [0, -1, 1.5, True])
def test_bad_depth_raises_before_touching_the_model(mlp, depth):
    before = copy.deepcopy(mlp.state_dict())
    with pytest.raises(ValueError, match="`depth` must be an int >= 1"):
        lorita.factorize(mlp, depth=depth, inplace=True)
    assert isinstance(mlp.net[0], nn.Linear)
    assert all(torch.equal(mlp.state_dict()[k], v) for k, v in before.items())


def test_truncate_gives_rank_r_and_eckart_young_error(cnn):
    ranks = {"conv1": 2, "conv2": 5, "head": 3}
    t = lorita.truncate(cnn, ranks)
    for name, r in ranks.items():
        w, tw = getattr(cnn, name).weight.detach(), getattr(t, name).weight.detach()
        mat, tmat = w.reshape(w.shape[0], -1).double(), tw.reshape(tw.shape[0], -1).double()
        S = torch.linalg.svdvals(mat)
        assert torch.linalg.matrix_rank(tmat, rtol=1e-5).item() == r
        err = float(((mat - tmat) ** 2).sum())
        assert err == pytest.approx(float((S[r:] ** 2).sum()), rel=1e-4)
    assert type(t.conv1) is nn.Conv2d


def test_failing_truncate_leaves_model_unchanged(cnn):
    before = copy.deepcopy(cnn.state_dict())
    with pytest.raises(ValueError, match=r"`head`: rank 7 is outside \[1, min\(out, in·k·k\)=6\]"):
        lorita.truncate(cnn, {"conv1": 2, "head": 7}, inplace=True)
    assert all(torch.equal(cnn.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="`nope` in `ranks` is not a module"):
        lorita.to_low_rank(cnn, {"conv1": 2, "nope": 1}, inplace=True)
    assert isinstance(cnn.conv1, nn.Conv2d)


def test_truncate_refuses_factorized_layers(cnn):
    with pytest.raises(TypeError, match="call lorita.merge"):
        lorita.truncate(lorita.factorize(cnn, depth=2), {"conv1": 2})


def test_to_low_rank_full_rank_equals_dense(cnn):
    cnn.eval()
    # conv2 (12 x 72) at rank 12 is worth splitting: 12·84 < 864. head 6x192 at rank 6: 6·198 < 1152.
    full = {"conv1": 8, "conv2": 12, "head": 6}
    lr = lorita.to_low_rank(cnn, full).eval()
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(lr(x), cnn(x), atol=1e-4, rtol=1e-4)


def test_to_low_rank_splits_only_where_it_saves_and_equals_truncate(cnn):
    cnn.eval()
    ranks = {"conv1": 8, "conv2": 3, "head": 2}  # conv1 8x27 at rank 8: 8·35 > 216 -> stays dense
    lr = lorita.to_low_rank(cnn, ranks).eval()
    assert type(lr.conv1) is nn.Conv2d
    assert isinstance(lr.conv2, LowRankConv2d) and lr.conv2.rank == 3
    assert isinstance(lr.head, LowRankLinear) and lr.head.first.out_features == 2
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(lr(x), lorita.truncate(cnn, ranks)(x), atol=1e-4, rtol=1e-4)
    # and merging it back gives the truncated architecture again
    back = lorita.merge(lr)
    TinyCNN().load_state_dict(back.state_dict(), strict=True)
    torch.testing.assert_close(back(x), lr(x), atol=1e-4, rtol=1e-4)


def test_singular_values_conv_matricization_and_factorized(cnn):
    sv = lorita.singular_values(cnn)
    assert list(sv) == ["conv1", "conv2", "head"]
    assert sv["conv2"].shape == (12,)  # min(12, 8·3·3)
    torch.testing.assert_close(sv["conv2"], torch.linalg.svdvals(cnn.conv2.weight.reshape(12, -1)))
    assert torch.all(sv["head"][:-1] >= sv["head"][1:])
    fact = lorita.factorize(cnn, depth=3)
    sv_f = lorita.singular_values(fact)
    torch.testing.assert_close(sv_f["head"], torch.linalg.svdvals(fact.head.merged_weight()))


def test_optimizer_step_moves_every_factor(mlp):
    fact = lorita.factorize(mlp, depth=3)
    before = [p.detach().clone() for p in fact.parameters()]
    opt = torch.optim.SGD(lorita.param_groups(fact, 1e-3), lr=0.1)
    fact(torch.randn(8, 12)).square().mean().backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, fact.parameters()))


def test_merge_reports_nan_with_layer_name(mlp):
    fact = lorita.factorize(mlp, depth=2)
    with torch.no_grad():
        fact.net[2].factors[0][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"`net.2`: .*non-finite"):
        lorita.merge(fact)


def test_dtype_and_requires_grad_are_kept():
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 3)).double()
    model[1].requires_grad_(False)
    f = lorita.factorize(model, depth=3)
    assert all(p.dtype == torch.float64 for p in f.parameters())
    assert not any(p.requires_grad for p in f[1].parameters())
    d = lorita.merge(f)
    assert d[0].weight.dtype == torch.float64 and not d[1].weight.requires_grad


def test_surgery_keeps_train_eval_mode(cnn):
    cnn.eval()
    f = lorita.factorize(cnn, depth=2)
    assert not any(m.training for m in f.modules())
    d = lorita.merge(f)
    assert not any(m.training for m in d.modules())
    assert not any(m.training for m in lorita.to_low_rank(d, {"head": 2}).modules())

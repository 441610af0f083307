"""Greedy rank search (lorita.search) on a small real task: a depth-3 FCN on an MNIST slice.

Every assertion about accuracy is made on the validation split the search itself used.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

import lorita
from lorita.data import TensorLoader, load_mnist, make_transform
from lorita.engine import make_optimizer, train_one_epoch
from lorita.finetune import FinetuneConfig
from lorita.models import FCN
from lorita.ranks.search import BatchEvaluator, GreedySearch, parse_budget, search, svd_of_product

MNIST_DIR = Path(__file__).resolve().parents[2] / "data" / "mnist"
X1 = torch.zeros(1, 1, 28, 28)


@pytest.fixture(scope="module")
def task():
    """(dense merged model, validation evaluator, train loader): 2 epochs on 3,000 digits."""
    d = load_mnist(MNIST_DIR, val_size=1000, verify=False)
    tf = make_transform(d, train=False, augment=False)
    train = TensorLoader(d.train_x[:3000], d.train_y[:3000], 100, tf, shuffle=True, seed=0)
    val = TensorLoader(d.val_x[:600], d.val_y[:600], 600, tf)
    torch.manual_seed(0)
    model = lorita.factorize(FCN(hidden=(64, 64)), depth=3)
    opt = make_optimizer("adam", lorita.param_groups(model, 1e-4), 3e-3)
    for epoch in range(2):
        train.set_epoch(epoch)
        train_one_epoch(model, train, opt, progress=False)
    return lorita.merge(model).eval(), BatchEvaluator(val), train


def _commits(res):
    return [r for r in res.trace if r["event"] == "commit"]


def test_search_never_violates_tolerance_and_stops_only_when_nothing_fits(task):
    dense, ev, _ = task
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    res = search(dense, ev, GreedySearch(tolerance=1.0), example_inputs=X1)
    floor = res.reference["acc"] - 0.01
    assert res.reference == pytest.approx({k: ev(dense)[k] for k in ("loss", "acc")})
    assert res.final["acc"] >= floor
    assert ev(res.model)["acc"] == pytest.approx(res.final["acc"])  # the returned model is the one judged
    assert all(r["val_acc"] >= floor for r in _commits(res))
    assert len(_commits(res)) >= 5 and res.macs < 0.5 * res.dense_macs
    # MACs/params bookkeeping equals PyTorch's own counter on the returned model
    cost = lorita.count_macs(res.model, X1)
    assert (res.macs, res.params) == (cost.total_macs, cost.total_params)
    assert res.trace[-1]["macs"] == res.macs
    # stopped at step 1 because no single reduction fits: lowering any split layer by 1 fails
    merged = lorita.merge(res.model)
    for name, r in res.ranks.items():
        if res.forms[name] == "low_rank" and r > 1:
            worse = lorita.to_low_rank(merged, {name: r - 1})
            assert ev(worse)["acc"] < floor, name
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())


def test_search_without_finetune_equals_one_shot_truncation_at_its_ranks(task):
    dense, ev, _ = task
    res = search(dense, ev, GreedySearch(tolerance=2.0), example_inputs=X1)
    want = lorita.to_low_rank(dense, {k: v for k, v in res.ranks.items() if res.forms[k] != "dense"})
    x = torch.randn(16, 1, 28, 28)
    torch.testing.assert_close(res.model(x), want(x), atol=1e-4, rtol=1e-4)


def test_budget_is_met_and_never_exceeded(task):
    dense, ev, _ = task
    res = search(dense, ev, GreedySearch(tolerance=10.0, budget=lorita.ParamBudget(0.2)), example_inputs=X1)
    assert res.budget_met is True and res.target_fraction <= 0.2
    w = sum(
        m.first.weight.numel() + m.second.weight.numel()
        if isinstance(m, lorita.LowRankLinear)
        else m.weight.numel()
        for n, m in res.model.named_modules()
        if n in res.ranks
    )
    dense_w = sum(m.weight.numel() for m in dense.modules() if isinstance(m, nn.Linear))
    assert w / dense_w == pytest.approx(res.target_fraction) and w <= 0.2 * dense_w
    assert res.final["acc"] >= res.reference["acc"] - 0.10
    # MAC budget: same rule on MACs per sample
    res = search(dense, ev, GreedySearch(tolerance=10.0, budget=parse_budget("macs:0.3")), example_inputs=X1)
    assert res.budget_met is True and res.macs <= 0.3 * res.dense_macs + 1


def test_unreachable_budget_stops_at_tolerance(task):
    dense, ev, _ = task
    res = search(dense, ev, GreedySearch(tolerance=0.5, budget=lorita.ParamBudget(0.01)), example_inputs=X1)
    assert res.budget_met is False and res.target_fraction > 0.01
    assert res.final["acc"] >= res.reference["acc"] - 0.005
    assert "no reduction keeps" in res.stop_reason


def test_multiple_keep_dense_and_exclude(task):
    dense, ev, _ = task
    res = search(
        dense, ev, GreedySearch(tolerance=2.0, multiple=8), example_inputs=X1, exclude_modules=["layers.4"]
    )
    assert "layers.4" not in res.ranks
    assert isinstance(res.model.layers[4], nn.Linear)
    assert torch.equal(res.model.layers[4].weight, dense.layers[4].weight)
    for name, r in res.ranks.items():
        assert res.forms[name] in ("dense", "low_rank")  # keep_dense: never a truncated dense layer
        if res.forms[name] == "low_rank":
            assert r % 8 == 0
    # the paper's behaviour (keep_dense=False) may leave truncated dense layers that save nothing
    res2 = search(
        dense,
        ev,
        GreedySearch(tolerance=2.0, keep_dense=False, max_commits=1, initial_step=4),
        example_inputs=X1,
    )
    assert list(res2.forms.values()).count("truncated") == 1 and res2.macs == res2.dense_macs


def test_trace_reproducible_with_seed_including_finetuning(task):
    dense, ev, train = task
    cfg = GreedySearch(
        tolerance=1.0,
        initial_step=16,
        finetune=FinetuneConfig(max_batches=3, lr=1e-3, when="every"),
        max_commits=4,
        seed=3,
    )

    def strip(trace):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in trace]

    a = search(dense, ev, cfg, example_inputs=X1, finetune_data=train)
    b = search(dense, ev, cfg, example_inputs=X1, finetune_data=train)
    assert strip(a.trace) == strip(b.trace) and a.finetunes >= 1
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_finetuned_weights_are_carried_forward_and_saved(task, tmp_path):
    dense, ev, train = task
    cfg = GreedySearch(
        tolerance=1.0, finetune=FinetuneConfig(max_batches=5, lr=1e-3, when="every"), max_commits=3
    )
    res = search(dense, ev, cfg, example_inputs=X1, finetune_data=train)
    assert any(r["finetuned"] for r in _commits(res))
    # fine-tuned: the weights differ from a plain truncation at the same ranks ...
    plain = lorita.to_low_rank(dense, {k: v for k, v in res.ranks.items() if res.forms[k] != "dense"})
    x = torch.randn(8, 1, 28, 28)
    assert (res.model(x) - plain(x)).abs().max() > 1e-3
    # ... the layers keep the searched ranks, and the saved file holds exactly these weights
    for name, r in res.ranks.items():
        mod = res.model.get_submodule(name)
        assert (mod.rank if res.forms[name] == "low_rank" else min(mod.weight.shape)) == r
    path = lorita.save(res.model, tmp_path / "low.safetensors")
    loaded = lorita.load(FCN(hidden=(64, 64)), path).eval()
    torch.testing.assert_close(loaded(x), res.model.eval()(x), atol=0, rtol=0)
    assert ev(loaded)["acc"] == pytest.approx(res.final["acc"])


def test_recover_finetuning_reaches_fewer_macs_than_plain_search(task):
    dense, ev, train = task
    plain = search(dense, ev, GreedySearch(tolerance=1.0), example_inputs=X1)
    ft = search(
        dense,
        ev,
        GreedySearch(tolerance=1.0, finetune=FinetuneConfig(max_batches=8, lr=2e-3)),
        example_inputs=X1,
        finetune_data=train,
    )
    assert ft.finetunes >= 1 and ft.final["acc"] >= ft.reference["acc"] - 0.01
    assert ft.macs < plain.macs


def test_conv_layers_are_searched_with_exact_mac_counts():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    ).eval()
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)

    def evaluate(m):  # agreement with the dense model's predictions: a stand-in validation task
        with torch.no_grad():
            out = m(x)
        return {
            "loss": float(((out - ref) ** 2).mean()),
            "acc": float((out.argmax(1) == ref.argmax(1)).float().mean()),
        }

    res = search(model, evaluate, GreedySearch(tolerance=20.0), example_inputs=x[:1])
    assert any(isinstance(m, lorita.LowRankConv2d) for m in res.model.modules())
    assert res.final["acc"] >= 0.8 - 1e-9
    assert res.macs == lorita.count_macs(res.model, x[:1]).total_macs < res.dense_macs


def test_svd_of_product_is_exact():
    torch.manual_seed(1)
    b, a = torch.randn(30, 5, dtype=torch.float64), torch.randn(5, 40, dtype=torch.float64)
    U, S, Vh = svd_of_product(b, a)
    torch.testing.assert_close((U * S) @ Vh, b @ a)
    torch.testing.assert_close(S, torch.linalg.svdvals(b @ a)[:5])
    torch.testing.assert_close(U.T @ U, torch.eye(5, dtype=torch.float64))


def test_warm_start_from_a_one_shot_policy(task):
    dense, ev, _ = task
    cold = search(dense, ev, GreedySearch(tolerance=1.0), example_inputs=X1)
    start = lorita.EnergyThreshold(0.999)
    res = search(dense, ev, GreedySearch(tolerance=1.0, start=start), example_inputs=X1)
    floor = res.reference["acc"] - 0.01
    # the reference is still the unmodified model; the first trace row is the warm-start point
    assert res.reference == cold.reference
    begin = res.trace[0]
    start_ranks = lorita.select_ranks(dense, start)
    split = {n: r for n, r in start_ranks.items() if r * sum(dict(dense.named_modules())[n].weight.shape) <
             dict(dense.named_modules())[n].weight.numel()}
    assert begin["event"] == "start"
    assert begin["val_acc"] == pytest.approx(ev(lorita.to_low_rank(dense, split))["acc"])
    assert begin["macs"] == lorita.count_macs(lorita.to_low_rank(dense, split), X1).total_macs
    # every commit lowers a layer below its start rank, within tolerance; fewer evaluations
    assert all(r["rank"] < start_ranks[r["layer"]] and r["val_acc"] >= floor for r in _commits(res))
    assert res.final["acc"] >= floor
    assert res.evaluations < cold.evaluations
    assert res.config["start"] == "energy:0.999"
    # a start that already breaks the tolerance is refused, and the input model is untouched
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    msg = r"search start rank:1 already has val acc .* more conservative policy \(e.g. energy:0.9999\)"
    with pytest.raises(ValueError, match=msg):
        search(dense, ev, GreedySearch(tolerance=1.0, start=lorita.FixedRank(1)), example_inputs=X1)
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
    with pytest.raises(TypeError, match="`start` must be a rank policy"):
        GreedySearch(start="energy:0.99")


def test_policy_string_inverts_parse_policy():
    from lorita.ranks.policies import parse_policy, policy_string

    for text in ("rank:16", "ratio:0.1", "energy:0.9999", "global:0.05", "params:0.05"):
        assert policy_string(parse_policy(text)) == text
    assert policy_string(lorita.MacBudget(0.3, example_inputs=X1)) == "macs:0.3"
    with pytest.raises(TypeError, match="not a rank policy"):
        policy_string(0.5)


def test_bad_input_errors(task):
    dense, ev, _ = task
    with pytest.raises(ValueError, match="`tolerance` must be accuracy points"):
        GreedySearch(tolerance=-1)
    with pytest.raises(ValueError, match="`multiple` must be an int >= 1"):
        GreedySearch(multiple=0)
    with pytest.raises(TypeError, match="`budget` must be ParamBudget"):
        GreedySearch(budget=0.2)
    with pytest.raises(ValueError, match="invalid budget 'flops:0.2'"):
        parse_budget("flops:0.2")
    with pytest.raises(ValueError, match="`finetune_data` is None"):
        search(dense, ev, GreedySearch(finetune=FinetuneConfig()), example_inputs=X1)
    with pytest.raises(TypeError, match="must return a mapping with 'loss' and 'acc'"):
        search(dense, lambda m: 0.9, example_inputs=X1)
    with pytest.raises(ValueError, match="no weight layers matched"):
        search(dense, ev, example_inputs=X1, target_modules="nothing")


def test_weight_layers_of_a_low_rank_model_do_not_list_the_thin_halves():
    # core fix: the two nn.Linear halves inside a LowRankLinear are not layers of their own
    from lorita.surgery import weight_layers

    low = lorita.to_low_rank(FCN(in_features=20, hidden=(16,), num_classes=4), {"layers.0": 3})
    assert [n for n, _ in weight_layers(low)] == ["layers.0", "layers.2"]
    assert set(lorita.singular_values(low)) == {"layers.0", "layers.2"}

"""measure_latency / compare_latency with an injected fake timer (no timing assertions)."""

import sys

import pytest
import torch
from torch import nn

import lorita
from _fake_timer import OVERHEAD, SECONDS_PER_MAC, FakeTimer
from lorita.latency import compare_latency, measure_latency


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def test_measure_latency_whole_and_per_layer_costs_and_threads_restored():
    model, x = _mlp(), torch.randn(4, 32)
    timer = FakeTimer()
    before = torch.get_num_threads()
    res = measure_latency(model, x, threads=1, timer=timer)
    assert torch.get_num_threads() == before
    assert all(c[2] == 1 for c in timer.calls)  # torch threads fixed while timing
    # whole model: 4·32·64 + 4·64·10 MACs + 2 ops of overhead
    assert res.median == pytest.approx((4 * 32 * 64 + 4 * 64 * 10 + 2 * OVERHEAD) * SECONDS_PER_MAC, rel=1e-12)
    assert res.iqr == 0.0 and res.samples == 1 and res.runtime == "eager" and not res.channels_last
    assert list(res.layers) == ["0", "2"]
    assert res.layers["0"].input_shape == (4, 32) and res.layers["2"].input_shape == (4, 64)
    assert res.layers["2"].median == pytest.approx((4 * 64 * 10 + OVERHEAD) * SECONDS_PER_MAC, rel=1e-12)
    assert res.layers["0"].kind == "Linear"
    assert measure_latency(model, x, layers=False, timer=FakeTimer()).layers == {}


def test_measure_latency_times_low_rank_layers_and_channels_last():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    lr = lorita.to_low_rank(cnn, {"0": 2, "2": 3})
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    timer = FakeTimer()
    res = measure_latency(lr, x, timer=timer)
    assert res.channels_last
    assert {k: v.kind for k, v in res.layers.items()} == {"0": "LowRankConv2d", "2": "LowRankConv2d"}
    assert all(c[3] for c in timer.calls)  # weights channels_last like the input
    assert res.layers["2"].input_shape == (2, 16, 8, 8)
    assert lr[0].first.weight.is_contiguous()  # the caller's model is untouched


def test_compare_latency_ratios_and_interleaving():
    model, x = _mlp(), torch.randn(1, 32)
    small = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 10))
    timer = FakeTimer()
    cmp = compare_latency({"dense": model, "small": small}, x, rounds=3, timer=timer)
    dense = 32 * 64 + 64 * 10 + 2 * OVERHEAD
    thin = 32 * 8 + 8 * 10 + 2 * OVERHEAD
    assert cmp.speedup["dense"] == 1.0
    assert cmp.speedup["small"] == pytest.approx(dense / thin, rel=1e-12)
    assert cmp.rounds["small"] == pytest.approx((thin * SECONDS_PER_MAC,) * 3)
    # order rotated per round: dense,small | small,dense | dense,small (by first-layer width)
    widths = [next(m.modules())[0].out_features for m in timer.modules]
    assert widths == [64, 8, 8, 64, 64, 8]
    cmp2 = compare_latency({"a": small, "b": model}, x, rounds=1, reference="b", timer=FakeTimer())
    assert cmp2.speedup["a"] == pytest.approx(dense / thin) and cmp2.reference == "b"


def test_bad_input_is_one_clear_line():
    model, x = _mlp(), torch.randn(4, 32)
    with pytest.raises(ValueError, match=r"`runtime`='tvm' is not one of 'eager', 'onnxruntime'"):
        measure_latency(model, x, runtime="tvm")
    with pytest.raises(ValueError, match=r"fails on `example_inputs` of shape \(4, 31\)"):
        measure_latency(model, torch.randn(4, 31), timer=FakeTimer())
    with pytest.raises(ValueError, match=r"`threads` must be an int >= 1, got 0"):
        measure_latency(model, x, threads=0)
    with pytest.raises(ValueError, match=r"`reference`='x' is not one of"):
        compare_latency({"a": model}, x, reference="x")
    with pytest.raises(ValueError, match=r"model 'b': .*shape \(4, 32\)"):
        compare_latency({"a": model, "b": nn.Linear(3, 3)}, x, timer=FakeTimer())
    with pytest.raises(ValueError, match="`timer` must return finite positive seconds"):
        measure_latency(model, x, timer=lambda fn, m, i: [0.0])


def test_onnxruntime_missing_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(ValueError, match=r"`runtime`='onnxruntime' needs the optional package onnxruntime"):
        measure_latency(_mlp(), torch.randn(2, 32), runtime="onnxruntime")


def test_onnxruntime_runtime_runs_a_session():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    timer = FakeTimer(run=True)  # runs the ORT session once per timing
    res = measure_latency(_mlp(), torch.randn(2, 32), runtime="onnxruntime", layers=False, timer=timer)
    assert res.runtime == "onnxruntime" and res.median == pytest.approx(
        (2 * 32 * 64 + 2 * 64 * 10 + 2 * OVERHEAD) * SECONDS_PER_MAC)


def test_caching_timer_replays_the_kth_measurement_per_signature():
    from lorita.timing import CachingTimer

    calls = []

    def base(fn, module, inputs):
        calls.append(type(module).__name__)
        return [float(len(calls))]

    timer = CachingTimer(base)
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)  # same signature: shapes, not values
    x = (torch.zeros(2, 4),)
    assert [timer(None, a, x), timer(None, b, x)] == [[1.0], [2.0]]  # rounds 1 and 2: two measurements
    timer.rewind()
    assert [timer(None, b, x), timer(None, a, x), timer(None, a, x)] == [[1.0], [2.0], [3.0]]
    assert timer(None, nn.Linear(4, 5), x) == [4.0] and len(calls) == 4

"""to_low_rank(split="latency") with a fake timer: exactly the faster splits, outputs = truncate."""

import pytest
import torch
from torch import nn

import lorita
from _fake_timer import OVERHEAD, FakeTimer
from lorita import LowRankConv2d, LowRankLinear


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 16, 3, padding=1)
        self.fc1 = nn.Linear(1024, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


X = torch.randn(1, 4, 8, 8)
# Hand-computed fake costs at batch 1 (MACs + OVERHEAD per op; a split has two ops):
#   conv rank 2: dense 16·36·64 + O = 38864, split 2·52·64 + 2O = 10656  -> split (3.647x)
#   fc1 rank 8:  dense 262144 + O, split 8·1280 + 2O = 14240              -> split
#   fc2 rank 125: saves MACs (64000 < 65536) but 64000 + 2O > 65536 + O   -> dense (slower)
#   fc3 rank 9:  saves MACs (2394 < 2560) but 2394 + 2O > 2560 + O        -> dense (slower)
RANKS = {"conv": 2, "fc1": 8, "fc2": 125, "fc3": 9}


def test_latency_split_keeps_exactly_the_faster_splits_and_equals_truncate(net):
    timer = FakeTimer()
    lr, dec = lorita.to_low_rank(net, RANKS, split="latency", example_inputs=X, timer=timer, report=True)
    assert {k for k, d in dec.items() if d.split} == {"conv", "fc1"}
    assert isinstance(lr.conv, LowRankConv2d) and isinstance(lr.fc1, LowRankLinear)
    assert type(lr.fc2) is nn.Linear and type(lr.fc3) is nn.Linear
    assert dec["conv"].latency_ratio == pytest.approx((16 * 36 * 64 + OVERHEAD) / (2 * 52 * 64 + 2 * OVERHEAD))
    assert dec["fc2"].latency_ratio == pytest.approx((65536 + OVERHEAD) / (64000 + 2 * OVERHEAD))
    assert dec["fc2"].mac_ratio == pytest.approx(65536 / 64000) and "slower" in dec["fc2"].reason
    assert dec["fc1"].used_rank == 8
    want = lorita.truncate(net, RANKS)(X)
    torch.testing.assert_close(lr(X), want, atol=1e-5, rtol=1e-4)
    # same-shaped layers share a measurement; every timing ran on the layer's real input shape
    shapes = {c[1] for c in timer.calls}
    assert shapes == {(1, 4, 8, 8), (1, 1024), (1, 256)}


def test_macs_split_is_unchanged_and_reports(net):
    lr, dec = lorita.to_low_rank(net, RANKS, report=True)
    assert {k for k, d in dec.items() if d.split} == {"conv", "fc1", "fc2", "fc3"}
    assert all(d.latency_ratio is None for d in dec.values())
    assert isinstance(lorita.to_low_rank(net, RANKS), Net)  # report=False: just the model
    dense = lorita.to_low_rank(net, {"fc3": 10}, report=True)[1]["fc3"]
    assert not dense.split and "would not save MACs" in dense.reason


def test_channels_last_input_times_channels_last_layers(net):
    timer = FakeTimer()
    x = X.contiguous(memory_format=torch.channels_last)
    lorita.to_low_rank(net, {"conv": 2}, split="latency", example_inputs=x, timer=timer)
    convs = [c for c in timer.calls if len(c[1]) == 4]
    assert convs and all(c[3] for c in convs)


def test_multiple_rounds_up_where_faster_and_keeps_more_energy(net):
    # misaligned widths (not multiples of 8) cost 3x: rank 5 -> 8 measures faster
    timer = FakeTimer(misaligned=3.0)
    ranks = {"fc1": 5, "fc2": 5}
    lr, dec = lorita.to_low_rank(net, ranks, split="latency", example_inputs=X, multiple=8, timer=timer, report=True)
    assert dec["fc1"].used_rank == 8 and lr.fc1.rank == 8 and "rounded up 5->8" in dec["fc1"].reason
    # the layer's output error (for every input: the residual's directions are orthogonal) and
    # its weight error are at most truncate's: rounding up keeps more singular directions
    h = torch.randn(3, 1024)
    ref = net.fc1(h)
    err_lr = (lr.fc1(h) - ref).norm(dim=1)
    err_tr = (lorita.truncate(net, ranks).fc1(h) - ref).norm(dim=1)
    assert (err_lr <= err_tr + 1e-5).all()
    # weight error of the rounded layer is smaller than truncate's (more singular directions)
    w = net.fc1.weight.detach()
    e8 = (lr.fc1.to_dense().weight - w).norm()
    e5 = (lorita.truncate(net, {"fc1": 5}).fc1.weight - w).norm()
    assert e8 < e5


def test_multiple_never_rounds_past_the_mac_limit():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16))
    # rank 7: 7·32 = 224 < 256 saves MACs; rank 8: 8·32 = 256 does not -> no rounded candidate
    _, dec = lorita.to_low_rank(m, {"0": 7}, split="latency", example_inputs=torch.randn(64, 16),
                                multiple=8, timer=FakeTimer(misaligned=3.0), report=True)
    assert dec["0"].used_rank == 7


def test_bad_split_arguments_are_one_clear_line(net):
    with pytest.raises(ValueError, match=r"`split`='fast' is not one of 'macs', 'latency'"):
        lorita.to_low_rank(net, RANKS, split="fast")
    with pytest.raises(ValueError, match=r"`example_inputs` is needed for split='latency'"):
        lorita.to_low_rank(net, RANKS, split="latency")
    with pytest.raises(ValueError, match=r"`runtime`='cuda' is not one of"):
        lorita.to_low_rank(net, RANKS, split="latency", example_inputs=X, runtime="cuda")
    with pytest.raises(ValueError, match=r"fails on `example_inputs` of shape \(1, 3, 8, 8\)"):
        lorita.to_low_rank(net, RANKS, split="latency", example_inputs=torch.randn(1, 3, 8, 8), timer=FakeTimer())
    with pytest.raises(ValueError, match=r"`multiple`=8 needs split='latency'"):
        lorita.to_low_rank(net, RANKS, multiple=8)
    with pytest.raises(ValueError, match=r"rank"):
        lorita.to_low_rank(net, {"fc3": 11}, split="latency", example_inputs=X, timer=FakeTimer())

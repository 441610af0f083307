"""Params and MACs: hand-computed values, low-rank pairs, factorized layers, FlopCounterMode."""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lorita


def test_linear_params_and_macs_by_hand():
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
    rep = lorita.count_macs(model, torch.zeros(3, 784))
    assert rep.row("0").params == 784 * 512 + 512
    assert rep.row("0").macs == 784 * 512
    assert rep.row("2").macs == 512 * 10
    assert rep.total_params == 784 * 512 + 512 + 512 * 10 + 10
    assert rep.total_macs == 784 * 512 + 512 * 10
    assert rep.total_flops == 2 * rep.total_macs


def test_conv_macs_by_hand():
    conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)  # 32x32 -> 16x16
    rep = lorita.count_macs(nn.Sequential(conv), torch.zeros(1, 3, 32, 32))
    assert rep.row("0").macs == 16 * 16 * 16 * 3 * 3 * 3
    assert rep.row("0").params == 16 * 27 + 16


def test_low_rank_pair_costs_by_hand():
    lin = lorita.LowRankLinear.from_dense(nn.Linear(100, 50), 8)
    conv = lorita.LowRankConv2d.from_dense(nn.Conv2d(16, 32, 3, padding=1), 4)
    rl = lorita.count_macs(nn.Sequential(lin), torch.zeros(1, 100))
    assert rl.row("0").params == 8 * (100 + 50) + 50 and rl.row("0").macs == 8 * 150
    assert rl.row("0").rank == 8
    rc = lorita.count_macs(nn.Sequential(conv), torch.zeros(1, 16, 10, 10))
    # first: 4 filters of 16x3x3 at 10x10; second: 1x1 4->32 at 10x10
    assert rc.row("0").macs == 100 * (4 * 144 + 32 * 4)
    assert rc.row("0").params == 4 * 144 + 32 * 4 + 32


def test_factorized_linear_counts_what_it_computes():
    f = lorita.FactorizedLinear(20, 5, depth=3, forward_mode="chain")
    rep = lorita.count_macs(nn.Sequential(f), torch.zeros(4, 20))
    assert rep.row("0").macs == 2 * 20 * 20 + 20 * 5
    assert rep.row("0").depth == 3 and rep.row("0").params == 2 * 400 + 100 + 5


def test_sequence_input_counts_tokens():
    rep = lorita.count_macs(nn.Sequential(nn.Linear(8, 4)), torch.zeros(2, 7, 8))
    assert rep.total_macs == 7 * 8 * 4


def test_total_matches_flop_counter_mode(cnn):
    x = torch.zeros(2, 3, 8, 8)
    counter = FlopCounterMode(display=False)
    with counter:
        cnn(x)
    rep = lorita.count_macs(cnn, x)
    assert 2 * rep.total_macs * 2 == counter.get_total_flops()  # 2 samples, FLOPs = 2·MACs
    # conv1: 8 out, 3·3·3 in, 8x8; conv2: 12 out, 8·9 in, 4x4 (stride 2, dilation 2, pad 2); head 192->6
    assert rep.total_macs == 64 * 8 * 27 + 16 * 12 * 72 + 192 * 6


def test_shared_parameter_counted_once():
    a = nn.Linear(4, 4)
    b = nn.Linear(4, 4)
    b.weight = a.weight
    rep = lorita.count_params(nn.Sequential(a, b))
    assert rep.total_params == 16 + 4 + 4


def test_table_and_dict():
    rep = lorita.count_macs(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), torch.zeros(2, 3))
    assert "| **total** |" in rep.table() and rep.to_dict()["total_flops"] == 12
    assert rep.row("(other)").params == 4  # BatchNorm affine


def test_params_only_table_has_no_macs_column_and_a_real_total():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    assert lorita.count_params(model).table().splitlines() == [
        "| layer | kind | rank/depth | params |",
        "|---|---|---|---:|",
        "| 0 | Linear |  | 8 |",
        "| (other) | - |  | 4 |",
        "| **total** |  |  | **12** |",
    ]
    assert lorita.count_macs(model, torch.zeros(2, 3)).table().splitlines() == [
        "| layer | kind | rank/depth | params | MACs |",
        "|---|---|---|---:|---:|",
        "| 0 | Linear |  | 8 | 6 |",
        "| (other) | - |  | 4 | 0 |",
        "| **total** |  |  | **12** | **6** |",
    ]
    assert "****" not in lorita.count_params(model).table()

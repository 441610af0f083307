"""count_macs: recurrent layers, attention's QKᵀ/AV, and modules it cannot count (issue 12, item 3).

Every number is computed by hand, per sample (batch 2, 12 time steps / tokens):
a recurrent layer applies each weight matrix once per step: ``gates·H·(in + H)`` per layer and
direction (LSTM 4 gates, GRU 3, RNN 1); attention adds ``QKᵀ`` and ``AV``, ``H·L·S·E_h`` each.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lorita

T = 12


def _seq(features: int = 32) -> torch.Tensor:
    return torch.randn(2, T, features)


@pytest.mark.parametrize(
    ("module", "per_step"),
    [
        (nn.LSTM(32, 64, batch_first=True), 4 * 64 * (32 + 64)),  # 24,576 (oneDNN kernel on CPU)
        (nn.GRU(32, 64, batch_first=True), 3 * 64 * (32 + 64)),
        (nn.RNN(32, 64, batch_first=True), 64 * (32 + 64)),
        # 2 layers, both directions: layer 1 reads 2H = 128 features
        (nn.LSTM(32, 64, 2, bidirectional=True, batch_first=True), 2 * 4 * 64 * (32 + 64) + 2 * 4 * 64 * (128 + 64)),
        (nn.GRU(32, 64, 2, bidirectional=True, batch_first=True), 2 * 3 * 64 * (32 + 64) + 2 * 3 * 64 * (128 + 64)),
        # proj_size=16: W_ih (256, 32), W_hh (256, 16), W_hr (16, 64)  (PyTorch's non-oneDNN path)
        (nn.LSTM(32, 64, proj_size=16, batch_first=True), 256 * 32 + 256 * 16 + 16 * 64),
    ],
    ids=["lstm", "gru", "rnn", "lstm-2x-bi", "gru-2x-bi", "lstm-proj"],
)
def test_recurrent_layers(module, per_step, caplog):
    with caplog.at_level(logging.WARNING, logger="lorita.counting"):
        report = lorita.count_macs(module, _seq())
    assert report.total_macs == per_step * T
    assert report.macs_complete and report.uncounted == {}
    assert "no MACs counted" not in caplog.text


def test_lstm_32_64_over_12_steps_is_294912():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(32, 64, batch_first=True)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    report = lorita.count_macs(Net(), _seq())
    assert report.row("rnn").macs == 294_912
    assert report.row("head").macs == 640
    assert report.total_macs == 294_912 + 640


class _Attn(nn.Module):
    def __init__(self, need_weights: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x):
        return self.attn(x, x, x, need_weights=self.need_weights)[0]


# in_proj 3·32·32·12 + out_proj 32·32·12 + QKᵀ 4·12·12·8 + AV 4·12·12·8
MHA_MACS = 3 * 32 * 32 * T + 32 * 32 * T + 2 * 4 * T * T * 8


@pytest.mark.parametrize("need_weights", [True, False], ids=["bmm-path", "sdpa-path"])
def test_multihead_attention_counts_qk_and_av(need_weights):
    report = lorita.count_macs(_Attn(need_weights), _seq())
    assert report.row("attn").macs == MHA_MACS == 58_368
    assert report.macs_complete


def test_stock_encoder_layer_and_bare_sdpa():
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    assert lorita.count_macs(layer, _seq()).total_macs == MHA_MACS + 2 * 32 * 64 * T

    class Sdpa(nn.Module):
        def forward(self, q):
            return F.scaled_dot_product_attention(q, q, q)

    q = torch.randn(2, 4, T, 8)  # (B, H, L, E)
    assert lorita.count_macs(Sdpa(), q).total_macs == 2 * 4 * T * T * 8


def test_uncounted_module_is_named_and_total_marked_lower_bound(caplog):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.bil = nn.Bilinear(8, 8, 4)  # aten._trilinear: PyTorch's counter has no formula
            self.norm = nn.LayerNorm(8)  # element-wise: not flagged

        def forward(self, x):
            h = self.norm(self.fc(x))
            return self.bil(h, h)

    with caplog.at_level(logging.WARNING, logger="lorita.counting"):
        report = lorita.count_macs(Net(), torch.randn(2, 8))
    assert report.uncounted == {"bil": "Bilinear"}
    assert not report.macs_complete
    assert report.total_macs == 64
    assert "`bil` (Bilinear)" in caplog.text and "lower bound" in caplog.text
    table = report.table()
    assert "**≥ 64**" in table and "MACs not counted for `bil` (Bilinear)" in table
    assert report.to_dict()["macs_complete"] is False
    assert report.to_dict()["uncounted"] == {"bil": "Bilinear"}


def test_complete_report_says_so():
    report = lorita.count_macs(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).eval(), torch.randn(2, 4))
    assert report.macs_complete and report.total_macs == 12
    assert "≥" not in report.table()
    assert not lorita.count_params(nn.Linear(4, 3)).macs_complete  # MACs not counted at all

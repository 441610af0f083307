"""The layer forms: depth-N training forms (``Factorized*``) and two-layer inference forms
(``LowRank*``), for Linear, Conv1d/Conv2d, MultiheadAttention and GPT-2's transposed Conv1D;
:mod:`lorita.layers.kinds` says which module kinds are supported and why others are skipped.

``from lorita.layers import FactorizedLinear`` (and the other names below) keeps working.
"""

from lorita.layers.attention import FactorizedMultiheadAttention
from lorita.layers.base import FactorizedLayer, FactorSide, ForwardMode, Init, LowRankLayer, adopt
from lorita.layers.conv import FactorizedConv1d, FactorizedConv2d, LowRankConv1d, LowRankConv2d
from lorita.layers.linear import FactorizedLinear, LowRankLinear
from lorita.layers.transposed import FactorizedTransposedLinear, LowRankTransposedLinear

__all__ = [
    "FactorizedLinear",
    "FactorizedConv2d",
    "LowRankLinear",
    "LowRankConv2d",
    "FactorizedConv1d",
    "LowRankConv1d",
    "FactorizedMultiheadAttention",
    "FactorizedTransposedLinear",
    "LowRankTransposedLinear",
    "FactorizedLayer",
    "LowRankLayer",
    "ForwardMode",
    "FactorSide",
    "Init",
    "adopt",
]

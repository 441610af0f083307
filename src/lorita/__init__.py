"""lorita — Low-Rank Induced Training (LoRITa, arXiv 2405.03089) as a library and CLI.

Factorize layers into ``depth`` linear factors, train with plain weight decay, merge the factors
back, truncate by SVD, and ship the two-layer low-rank model.
"""

from lorita.counting import CostReport, LayerCost, count_macs, count_params
from lorita.export import export_onnx
from lorita.finetune import DistillConfig, FinetuneConfig, distillation_loss, finetune
from lorita.fold import fold_batchnorm
from lorita.io import load, read_manifest, save
from lorita.latency import LatencyComparison, LatencyResult, compare_latency, measure_latency
from lorita.layers import (
    FactorizedConv1d,
    FactorizedConv2d,
    FactorizedLinear,
    FactorizedMultiheadAttention,
    FactorizedTransposedLinear,
    LowRankConv1d,
    LowRankConv2d,
    LowRankLinear,
    LowRankTransposedLinear,
)
from lorita.optim import param_groups
from lorita.quantize import load_quantized, quantize_int8, save_quantized
from lorita.ranks import (
    BatchEvaluator,
    EnergyThreshold,
    FixedRank,
    GlobalThreshold,
    GreedySearch,
    LatencyBudget,
    LayerBudget,
    MacBudget,
    ParamBudget,
    RankRatio,
    SearchResult,
    parse_policy,
    search,
    select_ranks,
)
from lorita.split import SplitDecision
from lorita.surgery import (
    effective_weight,
    factorize,
    factorize_plan,
    merge,
    singular_values,
    to_low_rank,
    truncate,
)
from lorita.targeting import TargetPlan

__version__ = "0.1.0"

__all__ = [
    # measured latency and latency-driven splits (issue 9)
    "LatencyBudget",
    "LayerBudget",
    "LatencyComparison",
    "LatencyResult",
    "SplitDecision",
    "compare_latency",
    "measure_latency",
    # search, fine-tuning, distillation, int8 (issue 3)
    "BatchEvaluator",
    "DistillConfig",
    "FinetuneConfig",
    "GreedySearch",
    "SearchResult",
    "distillation_loss",
    "finetune",
    "load_quantized",
    "quantize_int8",
    "save_quantized",
    "search",
    # core
    "CostReport",
    "EnergyThreshold",
    "FactorizedConv1d",
    "FactorizedConv2d",
    "FactorizedMultiheadAttention",
    "FactorizedTransposedLinear",
    "FactorizedLinear",
    "FixedRank",
    "GlobalThreshold",
    "LayerCost",
    "LowRankConv1d",
    "LowRankConv2d",
    "LowRankTransposedLinear",
    "LowRankLinear",
    "MacBudget",
    "ParamBudget",
    "RankRatio",
    "TargetPlan",
    "count_macs",
    "count_params",
    "effective_weight",
    "export_onnx",
    "fold_batchnorm",
    "factorize",
    "factorize_plan",
    "load",
    "merge",
    "param_groups",
    "parse_policy",
    "read_manifest",
    "save",
    "select_ranks",
    "singular_values",
    "to_low_rank",
    "truncate",
    "__version__",
]

"""Choosing ranks: rank policies and ``select_ranks`` (:mod:`lorita.ranks.policies`) and the
greedy, accuracy-driven search (:mod:`lorita.ranks.search`)."""

from lorita.ranks.policies import (
    EnergyThreshold,
    FixedRank,
    GlobalThreshold,
    LatencyBudget,
    LayerBudget,
    LayerInfo,
    MacBudget,
    ParamBudget,
    RankPolicy,
    RankRatio,
    deployable_cost,
    layer_infos,
    parse_policy,
    select_ranks,
)
from lorita.ranks.search import BatchEvaluator, GreedySearch, SearchResult, parse_budget, search, svd_of_product

__all__ = [
    "FixedRank",
    "RankRatio",
    "EnergyThreshold",
    "GlobalThreshold",
    "ParamBudget",
    "MacBudget",
    "LatencyBudget",
    "LayerBudget",
    "RankPolicy",
    "LayerInfo",
    "select_ranks",
    "parse_policy",
    "layer_infos",
    "deployable_cost",
    "GreedySearch",
    "SearchResult",
    "BatchEvaluator",
    "search",
    "svd_of_product",
    "parse_budget",
]

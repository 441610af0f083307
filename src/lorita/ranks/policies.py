"""Rank policies: small frozen dataclasses that turn singular values into integer ranks.

Per-layer policies (the paper's one-shot modes, arXiv 2405.03089 §4 / official
``utility/compress.py``; :class:`EnergyThreshold` is ours — the official code has none):

* :class:`FixedRank` — the same rank everywhere (clamped to each layer's ``min(m, n)``).
* :class:`RankRatio` — "uniform"/"local": ``floor(ratio · min(m, n))`` per layer.
* :class:`EnergyThreshold` — the smallest rank keeping ``energy`` of ``Σ S²``.
* :class:`GlobalThreshold` — the paper's "global": keep ``S_i / S_1 >= rel_sigma``, ``S_1`` of
  the layer's own spectrum (the official code's linear-layer branch ranks raw σ, a bug we do not
  repeat).

Budget policies (a cost fraction, over all targeted layers together — or per layer, for LayerBudget):

* :class:`ParamBudget` — deployable weight params ``<= fraction`` of the dense ones.
* :class:`MacBudget` — deployable MACs per sample ``<= fraction`` of the dense ones.
* :class:`LayerBudget` — the same share in every layer: each targeted layer's deployable params
  (and so its MACs) ``<= fraction`` of its own dense ones. Shape-driven, like :class:`RankRatio`.
* :class:`~lorita.ranks.latency_budget.LatencyBudget` — *measured* latency of the deployed model
  ``<= fraction`` of the dense one (bisects MacBudget's fraction; :mod:`lorita.ranks.latency_budget`).

ParamBudget and MacBudget drop singular values in order of normalized energy lost per unit of cost saved
(``(S_i² / Σ_j S_j²) / cost-per-rank``), a greedy knapsack that discards the least energy for the
budget. A layer's deployable cost at rank ``r`` is ``min(r·(m + n), m·n)`` (times output positions
for MACs): the split is used only where it is cheaper (:func:`lorita.to_low_rank`). With
``layer_cap=c`` the knapsack starts every layer at LayerBudget(c)'s rank, so no layer keeps more
than ``c`` of its own cost (``macs:0.2,cap=0.5``). Every policy gives ranks >= 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from torch import nn

from lorita import linalg
from lorita.ranks._budget import budget_ranks as _budget_ranks
from lorita.ranks._budget import check_cap as _check_cap
from lorita.ranks._budget import check_fraction as _frac
from lorita.ranks._budget import check_multiple, deployable_cost, round_rank, round_rank_down
from lorita.ranks.latency_budget import LatencyBudget
from lorita.ranks.layer_info import LayerInfo, layer_infos
from lorita.targeting import Targets

__all__ = [
    "FixedRank",
    "RankRatio",
    "EnergyThreshold",
    "GlobalThreshold",
    "ParamBudget",
    "MacBudget",
    "LayerBudget",
    "LatencyBudget",
    "RankPolicy",
    "LayerInfo",
    "select_ranks",
    "parse_policy",
    "layer_infos",
    "deployable_cost",
    "POLICY_KINDS",
    "PolicyKind",
    "policy_string",
    "round_rank",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FixedRank:
    """The same ``rank`` in every layer, clamped to ``min(m, n)``."""

    rank: int

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"`rank` must be an int >= 1, got {self.rank!r}")

    def __call__(self, info: LayerInfo) -> int:
        return min(self.rank, info.max_rank)


@dataclass(frozen=True)
class RankRatio:
    """Uniform ("local") policy: ``max(1, floor(ratio · min(m, n)))`` in every layer."""

    ratio: float

    def __post_init__(self) -> None:
        _frac(self.ratio, "ratio")

    def __call__(self, info: LayerInfo) -> int:
        return linalg.rank_for_ratio(info.max_rank, self.ratio)


@dataclass(frozen=True)
class EnergyThreshold:
    """Smallest rank whose ``Σ_{i<=r} S_i² / Σ S²`` is at least ``energy``."""

    energy: float

    def __post_init__(self) -> None:
        _frac(self.energy, "energy")

    def __call__(self, info: LayerInfo) -> int:
        return linalg.rank_for_energy(info.S, self.energy)


@dataclass(frozen=True)
class GlobalThreshold:
    """Paper's "global" policy: keep singular values with ``S_i / S_1 >= rel_sigma``."""

    rel_sigma: float

    def __post_init__(self) -> None:
        _frac(self.rel_sigma, "rel_sigma", lo_open=False)

    def __call__(self, info: LayerInfo) -> int:
        return linalg.rank_for_rel_sigma(info.S, self.rel_sigma)


@dataclass(frozen=True)
class ParamBudget:
    """Deployable weight params of the targeted layers ``<= fraction`` of their dense params.

    ``layer_cap`` (optional, in (0, 1]): besides the total, no layer keeps more than ``layer_cap``
    of its own dense cost — the knapsack starts every layer at ``LayerBudget(layer_cap)``'s
    rank instead of full rank (see :class:`MacBudget`). CLI: ``params:0.2,cap=0.5``.
    """

    fraction: float
    layer_cap: float | None = None

    def __post_init__(self) -> None:
        _frac(self.fraction, "fraction")
        _check_cap(self.layer_cap)


@dataclass(frozen=True)
class MacBudget:
    """Deployable MACs per sample of the targeted layers ``<= fraction`` of their dense MACs.

    ``example_inputs``: a tensor or tuple of tensors the model accepts (batch of any size; MACs
    are per sample), used to find each layer's output positions.

    ``layer_cap`` (optional, in (0, 1]): a per-layer ceiling on top of the total — every layer
    keeps ``<= layer_cap`` of its own dense cost, so none stays dense (any cap < 1 forces a real
    split everywhere). The greedy starts each layer at ``LayerBudget(layer_cap)``'s rank
    (rounded down with ``multiple``; a start rank below ``multiple`` is kept as computed, so a cap can
    reach budgets the multiple alone cannot) and spends the rest of the cut where the spectra say. A hybrid
    of the two allocations, ours: the energy of MacBudget where it matters, without the wide,
    memory-bound layers MacBudget may keep dense on flat spectra (``benchmarks/results/layer_cap.md``).
    ``None`` (default) is plain MacBudget; ``1.0`` equals it. CLI: ``macs:0.2,cap=0.5``.

    Raises:
        ValueError / TypeError: ``fraction`` or ``layer_cap`` not a number in (0, 1]; no
            ``example_inputs``.
    """

    fraction: float
    example_inputs: Any = field(default=None, compare=False, repr=False)
    layer_cap: float | None = None

    def __post_init__(self) -> None:
        _frac(self.fraction, "fraction")
        _check_cap(self.layer_cap)
        if self.example_inputs is None:
            raise ValueError("MacBudget needs `example_inputs` (e.g. torch.zeros(1, 3, 32, 32))")


@dataclass(frozen=True)
class LayerBudget:
    """The same cost share in every layer: rank ``r = floor(fraction · m·n / (m + n))`` for an
    ``(m, n)`` weight, the largest whose deployable params ``min(r·(m+n), m·n)`` are
    ``<= fraction · m·n`` (full rank at ``fraction=1``; at least 1). MACs per layer are params
    times output positions, so every layer — and the whole targeted set — keeps ``<= fraction``
    of its MACs too, with no example inputs needed.

    Where :class:`MacBudget` spends the budget where the spectra say (on random or flat spectra
    it may keep a few wide layers dense and cut others to rank 1), this one gives every layer the
    same share, so each low-rank pair is ``1/fraction`` times cheaper than its dense layer: a
    predictable per-layer speed-up (``benchmarks/results/layer_budget.md``), at the cost of the
    energy a spectrum-aware allocation would keep.

    With ``select_ranks(..., multiple=k)`` ranks are rounded *down* to a multiple of ``k`` (the
    budget still holds); a rank below ``k`` stays as computed. Ours (the paper's policies are
    :class:`RankRatio`, :class:`GlobalThreshold` and its budget search, arXiv 2405.03089 §4).

    Raises:
        ValueError / TypeError: ``fraction`` not a number in (0, 1].
    """

    fraction: float

    def __post_init__(self) -> None:
        _frac(self.fraction, "fraction")

    def __call__(self, info: LayerInfo) -> int:
        m, n = info.shape
        if self.fraction >= 1.0:
            return info.max_rank
        return max(1, min(info.max_rank, math.floor(Fraction(self.fraction) * m * n / (m + n))))


RankPolicy = (FixedRank | RankRatio | EnergyThreshold | GlobalThreshold | ParamBudget | MacBudget | LayerBudget
              | LatencyBudget)
_LAYER_POLICIES = (FixedRank, RankRatio, EnergyThreshold, GlobalThreshold)


def select_ranks(
    model: nn.Module,
    policy: RankPolicy,
    target_modules: Targets = None,
    exclude_modules: Targets = None,
    multiple: int = 1,
) -> dict[str, int]:
    """Choose an integer rank for every targeted layer.

    Args:
        model: merged or factorized model (factorized layers are merged for the SVD).
        policy: a rank policy dataclass (see module docstring) or a string for
            :func:`parse_policy`.
        target_modules, exclude_modules: which layers (default: every Linear/Conv2d).
        multiple: rank granularity. Budget policies (:class:`ParamBudget`, :class:`MacBudget`,
            :class:`LatencyBudget`) drop singular values in blocks, so every rank is a multiple of
            ``multiple`` or the layer's full ``min(m, n)`` and the budget still holds; per-layer
            policies' ranks are rounded *up* (:func:`round_rank`; the energy kept or rank asked for
            still holds), :class:`LayerBudget`'s *down* (its per-layer budget still holds). Use the
            SIMD block of the kernels you deploy on — ONNX Runtime's blocked
            (NCHWc) conv layout holds channels in blocks of 8 (AVX2) or 16 (AVX-512), so a rank of 11
            runs as 16 (measured: ``benchmarks/results/rank_multiple.md``). Default 1.

    Returns:
        ``{fqn: rank}`` with ``1 <= rank <= min(m, n)``, in module order.

    Raises:
        ValueError / TypeError: unknown policy, no layer matched, non-finite weights, a bad
            ``multiple``, or an infeasible budget.
    """
    check_multiple(multiple)
    if isinstance(policy, str):
        policy = parse_policy(policy)
    if isinstance(policy, _LAYER_POLICIES):
        infos = layer_infos(model, target_modules, exclude_modules)
        ranks = {i.name: round_rank(int(policy(i)), i.max_rank, multiple) for i in infos}
        return _warn_rank_one(infos, ranks, policy) if isinstance(policy, RankRatio | FixedRank) else ranks
    if isinstance(policy, LayerBudget):  # rounded down: the per-layer budget still holds
        infos = layer_infos(model, target_modules, exclude_modules)
        ranks = _layer_budget_ranks(infos, policy, multiple)
        return _warn_rank_one(infos, ranks, policy)
    if isinstance(policy, ParamBudget | MacBudget):
        use_macs = isinstance(policy, MacBudget)
        infos = layer_infos(model, target_modules, exclude_modules,
                            example_inputs=policy.example_inputs if use_macs else None)
        cap = policy.layer_cap
        start = None if cap is None else _layer_budget_ranks(infos, LayerBudget(cap), multiple)
        return _budget_ranks(infos, policy.fraction, use_macs=use_macs, multiple=multiple, start=start)
    if isinstance(policy, LatencyBudget):  # bisects MacBudget's (or LayerBudget's) fraction against latency
        if policy.allocation == "layer":
            infos = layer_infos(model, target_modules, exclude_modules)
            return policy.choose(model, lambda f: _layer_budget_ranks(infos, LayerBudget(f), multiple))
        infos = layer_infos(model, target_modules, exclude_modules, example_inputs=policy.example_inputs)
        cap = policy.layer_cap
        start = None if cap is None else _layer_budget_ranks(infos, LayerBudget(cap), multiple)
        return policy.choose(model, lambda f: _budget_ranks(infos, f, use_macs=True, multiple=multiple, start=start))
    raise TypeError(
        f"unknown rank policy {policy!r}; use FixedRank, RankRatio, EnergyThreshold, GlobalThreshold, "
        f"ParamBudget, MacBudget, LayerBudget or LatencyBudget"
    )


def _layer_budget_ranks(infos: list[LayerInfo], policy: LayerBudget, multiple: int) -> dict[str, int]:
    """:class:`LayerBudget`'s ranks, rounded down to ``multiple`` (its per-layer budget still holds)."""
    return {i.name: round_rank_down(policy(i), multiple) for i in infos}


#: A layer that a shape-driven policy (:class:`RankRatio`, :class:`FixedRank`, :class:`LayerBudget`)
#: cuts to rank 1 while keeping less than this share of its energy ``Σ S²`` is logged (``logging.WARNING``): typically a
#: small classifier head under a uniform ratio (``ratio:0.1`` on a 10-class head), where rank 1
#: collapses the logits onto one direction. Budget policies choose rank 1 from the spectra on
#: purpose and are not warned about.
RANK_ONE_WARN_ENERGY = 0.9


def _warn_rank_one(infos: list[LayerInfo], ranks: dict[str, int], policy: Any) -> dict[str, int]:
    """Log one warning per layer that ``policy`` cuts to rank 1 although it has more than one
    direction and rank 1 keeps < :data:`RANK_ONE_WARN_ENERGY` of its energy; returns ``ranks``."""
    for info in infos:
        if ranks.get(info.name) != 1 or info.max_rank <= 1:
            continue
        kept = float(linalg.energy(info.S)[0])
        if kept < RANK_ONE_WARN_ENERGY:
            m, n = info.shape
            logger.warning(
                "`%s` (%d×%d, max rank %d) gets rank 1 under %r, keeping %.1f%% of its energy — exclude it "
                "(`exclude_modules='%s'`) or use a larger ratio/rank", info.name, m, n, info.max_rank, policy,
                100 * kept, info.name,
            )
    return ranks


@dataclass(frozen=True)
class PolicyKind:
    """One row of :data:`POLICY_KINDS`: the policy class, its value attribute, how the value is
    parsed from text, and the form shown in messages."""

    cls: type
    attr: str
    parse: Callable[[str], float]
    doc: str


#: The one table of policy kinds (torchao's config-table habit): ``"kind:value"`` strings, their
#: classes, :func:`parse_policy`, :func:`policy_string` and the CLI's choices all come from it.
POLICY_KINDS: Mapping[str, PolicyKind] = {
    "energy": PolicyKind(EnergyThreshold, "energy", float, "EnergyThreshold(energy in (0, 1])"),
    "ratio": PolicyKind(RankRatio, "ratio", float, "RankRatio(ratio in (0, 1])"),
    "global": PolicyKind(GlobalThreshold, "rel_sigma", float, "GlobalThreshold(rel_sigma in [0, 1])"),
    "params": PolicyKind(ParamBudget, "fraction", float, "ParamBudget(fraction in (0, 1]; optional ,cap=C)"),
    "macs": PolicyKind(MacBudget, "fraction", float,
                       "MacBudget(fraction in (0, 1]; needs example inputs; optional ,cap=C)"),
    "layer": PolicyKind(LayerBudget, "fraction", float, "LayerBudget(fraction of each layer's cost in (0, 1])"),
    "rank": PolicyKind(FixedRank, "rank", int, "FixedRank(rank: int)"),
    "latency": PolicyKind(
        LatencyBudget, "fraction", float,
        "LatencyBudget(fraction of dense latency in (0, 1]; needs example inputs; optional ,cap=C)"
    ),
}


def policy_string(policy: RankPolicy) -> str:
    """The CLI string of a policy, the inverse of :func:`parse_policy` (``EnergyThreshold(0.99)``
    -> ``"energy:0.99"``; ``MacBudget(0.2, layer_cap=0.5)`` -> ``"macs:0.2,cap=0.5"``; a MacBudget's
    ``example_inputs`` are not part of it).

    Raises:
        TypeError: not a rank policy.
    """
    for kind, row in POLICY_KINDS.items():
        if type(policy) is row.cls:
            cap = getattr(policy, "layer_cap", None)
            return f"{kind}:{getattr(policy, row.attr):g}" + ("" if cap is None else f",cap={cap:g}")
    raise TypeError(f"not a rank policy: {type(policy).__name__}; e.g. EnergyThreshold(0.99)")


def parse_policy(text: str, example_inputs: Any = None) -> RankPolicy:
    """Parse ``"kind:value"``: ``rank:32``, ``ratio:0.1``, ``energy:0.99``, ``global:0.05``,
    ``params:0.05``, ``macs:0.1``, ``layer:0.2``, ``latency:0.5`` (``macs``/``latency`` need ``example_inputs``);
    see :data:`POLICY_KINDS`. ``params``, ``macs`` and ``latency`` take an optional per-layer cap:
    ``macs:0.2,cap=0.5`` is ``MacBudget(0.2, layer_cap=0.5)``.

    Raises:
        ValueError: unknown kind or bad value (the message lists the valid forms).
    """
    valid = "; ".join(f"{k}:<{v.doc}>" for k, v in POLICY_KINDS.items())
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"invalid policy {text!r}; expected kind:value, one of: {valid}")
    kind, _, raw = text.partition(":")
    kind = kind.strip().lower()
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy kind {kind!r} in {text!r}; expected one of: {valid}")
    row = POLICY_KINDS[kind]
    raw, comma, opt = raw.partition(",")
    cap = None
    if comma:
        key, eq, val = opt.partition("=")
        if row.cls not in (ParamBudget, MacBudget, LatencyBudget) or key.strip() != "cap" or not eq:
            raise ValueError(f"invalid option {opt!r} in policy {text!r}; only params, macs and latency take one, "
                             f"`,cap=C` (a per-layer cost cap in (0, 1]), e.g. macs:0.2,cap=0.5")
        try:
            cap = float(val)
        except ValueError:
            raise ValueError(f"invalid cap {val!r} in policy {text!r}; expected a number in (0, 1], "
                             f"e.g. macs:0.2,cap=0.5") from None
    try:
        value = row.parse(raw)
    except ValueError:
        raise ValueError(f"invalid value {raw!r} in policy {text!r}; expected {row.doc}") from None
    if row.cls is MacBudget:
        return MacBudget(value, example_inputs=example_inputs, layer_cap=cap)
    if row.cls is ParamBudget:
        return ParamBudget(value, layer_cap=cap)
    if row.cls is LatencyBudget:
        return row.cls(value, example_inputs=example_inputs, layer_cap=cap)
    return row.cls(value)

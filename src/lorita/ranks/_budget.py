"""The budget knapsack behind :class:`~lorita.ranks.ParamBudget`, :class:`~lorita.ranks.MacBudget`
and :class:`~lorita.ranks.LatencyBudget`, and rank granularity (``select_ranks(..., multiple=)``).

Singular values are dropped in order of normalized energy lost per unit of cost saved
(``(S_i² / Σ_j S_j²) / cost-per-rank``), in blocks of ``multiple`` (Eckart–Young: the error of a
layer truncated to rank r is its tail energy, so this greedy discards the least energy per cost).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lorita import linalg

if TYPE_CHECKING:
    from lorita.ranks.policies import LayerInfo


def deployable_cost(m: int, n: int, rank: int) -> int:
    """Weight params of a rank-``rank`` layer in its deployable form: ``min(r·(m+n), m·n)``."""
    return min(linalg.low_rank_params(m, n, rank), m * n)


def levels_for(max_rank: int, multiple: int) -> list[int]:
    """The ranks a layer may take, descending: ``max_rank``, then the multiples of ``multiple``
    below it down to ``multiple`` (``[max_rank, ..., 1]`` for ``multiple=1``; only ``[max_rank]``
    when ``max_rank <= multiple``)."""
    below = range((max_rank - 1) // multiple * multiple, 0, -multiple)
    return [max_rank, *below]


def budget_ranks(infos: list[LayerInfo], fraction: float, use_macs: bool, multiple: int = 1,
                 start: dict[str, int] | None = None) -> dict[str, int]:
    """The knapsack: ranks whose total deployable cost is ``<= fraction`` of the dense total.

    ``start``: each layer's highest allowed rank (default its full ``min(m, n)``); the greedy cuts
    from there (a layer cap, ``MacBudget(..., layer_cap=c)``, starts every layer at
    LayerBudget(c)'s rank). ``fraction`` is always of the *dense* total.

    Raises:
        ValueError: the budget cannot be met even at the lowest allowed ranks.
    """
    def weight(info: LayerInfo) -> int:
        return (info.positions or 1) if use_macs else 1

    ranks = {i.name: i.max_rank if start is None else start[i.name] for i in infos}
    dense_total = sum(i.shape[0] * i.shape[1] * weight(i) for i in infos)
    budget = fraction * dense_total

    def cost(i: LayerInfo, r: int) -> int:
        return deployable_cost(i.shape[0], i.shape[1], r) * weight(i)

    current = {i.name: cost(i, ranks[i.name]) for i in infos}
    total = sum(current.values())
    if total <= budget:
        return ranks
    # Candidates: drop the block of singular values S[b:a] (a rank step a -> b between two allowed
    # levels; single values when multiple=1) of each layer; score = normalized energy lost per unit
    # of cost saved. S is descending, so the scores rise from a layer's tail inwards: processed in
    # score order, every layer is cut tail first (ties broken by the larger a, i.e. the tail).
    levels = {i.name: levels_for(ranks[i.name], multiple) for i in infos}
    cands: list[tuple[float, int, int, int, LayerInfo]] = []
    for li, info in enumerate(infos):
        sq = info.S.double() ** 2
        tot = float(sq.sum()) or 1.0
        per_rank = (info.shape[0] + info.shape[1]) * weight(info)
        lv = levels[info.name]
        for a, b in zip(lv, lv[1:], strict=False):
            cands.append((float(sq[b:a].sum()) / tot / ((a - b) * per_rank), li, -a, b, info))
    cands.sort(key=lambda c: (c[0], c[1], c[2]))
    for _, _, neg_a, b, info in cands:
        a = -neg_a
        if ranks[info.name] != a:
            # Only possible with exactly tied scores across blocks; take the next step from the tail.
            lv = levels[info.name]
            k = lv.index(ranks[info.name])
            if k + 1 >= len(lv):
                continue
            b = lv[k + 1]
        ranks[info.name] = b
        new = cost(info, b)
        total += new - current[info.name]
        current[info.name] = new
        if total <= budget:
            return ranks
    floor = sum(cost(i, levels[i.name][-1]) for i in infos) / dense_total
    lowest = "rank 1" if multiple == 1 else f"the lowest rank allowed by `multiple`={multiple}"
    raise ValueError(
        f"budget {fraction:g} cannot be met: even {lowest} in every targeted layer keeps "
        f"{floor:.4f} of the dense {'MACs' if use_macs else 'params'}; raise the budget"
        + (", lower `multiple`" if multiple > 1 else "") + " or target more layers"
    )


def round_rank(rank: int, max_rank: int, multiple: int) -> int:
    """``rank`` rounded *up* to a multiple of ``multiple``, capped at ``max_rank`` (what a
    per-layer policy's ranks become under ``select_ranks(..., multiple=k)``: the policy's promise —
    the energy kept, the rank asked for — still holds).

    Example: ``round_rank(11, 64, 8) == 16``; ``round_rank(60, 64, 8) == 64``; ``round_rank(3, 3, 8) == 3``.
    """
    return min(max_rank, -(-rank // multiple) * multiple)


def round_rank_down(rank: int, multiple: int) -> int:
    """``rank`` rounded *down* to a multiple of ``multiple`` (what :class:`~lorita.ranks.LayerBudget`'s
    ranks become: its per-layer budget still holds); a rank below ``multiple`` is kept, since 0 is
    not a rank.

    Example: ``round_rank_down(29, 8) == 24``; ``round_rank_down(4, 8) == 4``.
    """
    return rank if rank < multiple else rank // multiple * multiple


def check_fraction(value: Any, name: str, lo_open: bool = True) -> float:
    """``value`` as a float in (0, 1] (``lo_open=False``: [0, 1]).

    Raises:
        TypeError: not a number (bools and NaN included), naming ``name``.
        ValueError: out of range, naming ``name`` and the range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(f"`{name}` must be a number, got {value!r}")
    ok = (0.0 < value <= 1.0) if lo_open else (0.0 <= value <= 1.0)
    if not ok:
        rng = "(0, 1]" if lo_open else "[0, 1]"
        raise ValueError(f"`{name}` must be in {rng}, got {value}")
    return float(value)


def check_cap(cap: Any) -> None:
    """A policy's ``layer_cap``: None, or a fraction in (0, 1] (errors as :func:`check_fraction`)."""
    if cap is not None:
        check_fraction(cap, "layer_cap")


def check_multiple(multiple: Any) -> int:
    """``multiple`` as an int >= 1, or ValueError naming it."""
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"`multiple` must be an int >= 1 (e.g. 8 for kernels that block channels by 8), "
                         f"got {multiple!r}")
    return multiple

"""Which layers :func:`lorita.to_low_rank` splits: by MACs, or by measured latency.

``split="macs"`` (paper §2.9): split where ``r·(m + n) < m·n``. ``split="latency"``: of those,
split only where the two thin layers measure faster than the dense layer on the input the layer
really gets inside the model (captured with a forward hook on ``example_inputs``, in its memory
format: a channels_last input times channels_last layers). The extra op, thin channel counts
that vectorize badly and memory traffic make many MAC-saving splits slower in practice (issue 9).
With ``multiple=k`` the rank rounded up to a multiple of ``k`` is timed too and used where it
measures faster still — never above the largest rank where the split still saves MACs. Rounding
up keeps more singular directions (more energy), so such a layer's error is *smaller* than
``truncate``'s, not equal to it.

Each layer's dense and candidate forms are timed interleaved over ``rounds`` rounds (median of
per-round ratios), with an injectable timer (:mod:`lorita.timing`); layers of the same shapes
share one measurement, so equal layers get equal decisions.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lorita import linalg, timing
from lorita.layers import kinds

__all__ = ["SPLITS", "SplitDecision", "check_split_args", "decide_splits"]

logger = logging.getLogger(__name__)

SPLITS = ("macs", "latency")


@dataclass(frozen=True)
class SplitDecision:
    """What :func:`lorita.to_low_rank` did with one layer.

    Attributes:
        name: fqn. split: True when replaced by a low-rank pair.
        rank: the requested rank. used_rank: the pair's rank (``rank``, or rounded up to ``multiple``);
            ``rank`` for a dense layer (its weight truncated to it).
        mac_ratio: dense MACs / split MACs at ``used_rank`` (``m·n / (r·(m + n))``; > 1 saves MACs).
        latency_ratio: measured dense time / split time of the best candidate (> 1: the split is
            faster); None when not measured (``split="macs"`` or no candidate).
        reason: one sentence saying why.
    """

    name: str
    split: bool
    rank: int
    used_rank: int
    mac_ratio: float
    latency_ratio: float | None
    reason: str


def check_split_args(split: str, example_inputs: Any, runtime: str, threads: int, multiple: int | None) -> None:
    """Validate :func:`lorita.to_low_rank`'s split arguments (ValueError naming the parameter)."""
    if split not in SPLITS:
        raise ValueError(f"`split`={split!r} is not one of {', '.join(map(repr, SPLITS))}")
    if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
        raise ValueError(f"`multiple` must be None or an int >= 1, got {multiple!r}")
    if split == "macs":
        if multiple not in (None, 1):
            raise ValueError(
                f"`multiple`={multiple} needs split='latency': a rounded-up rank is kept only where it measures faster"
            )
        return
    if example_inputs is None:
        raise ValueError("`example_inputs` is needed for split='latency' (e.g. a batch of real inputs)")
    timing.as_inputs(example_inputs)
    timing.check_runtime(runtime)
    timing.check_threads(threads)


def _mac_ratio(m: int, n: int, r: int) -> float:
    return m * n / linalg.low_rank_params(m, n, r)


def _candidates(m: int, n: int, r: int, multiple: int | None) -> list[int]:
    out = [r]
    if multiple and multiple > 1:
        up = -(-r // multiple) * multiple
        if up != r and up <= min(m, n) and linalg.worth_splitting(m, n, up):
            out.append(up)
    return out


def _mac_decisions(layers: Mapping[str, nn.Module], ranks: Mapping[str, int]) -> dict[str, SplitDecision]:
    out = {}
    for fqn, mod in layers.items():
        w = mod.weight.detach()
        m, n, r = w.shape[0], w[0].numel(), ranks[fqn]
        ok_rank = isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= min(m, n)
        ratio = _mac_ratio(m, n, r) if ok_rank else 0.0
        if kinds.low_rank_class(mod) is None:
            out[fqn] = SplitDecision(fqn, False, r, r, ratio, None, "attention projections are not split")
        elif ok_rank and linalg.worth_splitting(m, n, r):
            out[fqn] = SplitDecision(fqn, True, r, r, ratio, None, "split saves MACs (not timed)")
        else:
            why = f"split would not save MACs at rank {r} (r·(m+n) >= m·n = {m}·{n})"
            out[fqn] = SplitDecision(fqn, False, r, r, ratio, None, why)
    return out


def _time_layer(
    name: str, dense: nn.Module, source: nn.Module, x: tuple, cands: list[int], channels_last: bool,
    runtime: str, threads: int, timer: timing.Timer, rounds: int,
) -> list[float]:
    """Speedups ``t_dense / t_split`` of each candidate rank (interleaved rounds)."""
    runners = [timing.runner(dense, x, runtime, threads, layer=True)]
    for r in cands:
        pair = kinds.low_rank_class(source).from_dense(source, r, name=name).eval()
        if channels_last:
            pair = pair.to(memory_format=torch.channels_last)
        runners.append(timing.runner(pair, x, runtime, threads, layer=True))
    times = timing.interleaved(runners, timer, rounds)
    return [statistics.median(d / s for d, s in zip(times[0], t, strict=True)) for t in times[1:]]


def decide_splits(
    work: nn.Module,
    layers: Mapping[str, nn.Module],
    ranks: Mapping[str, int],
    split: str = "macs",
    example_inputs: Any = None,
    runtime: str = "eager",
    threads: int = 1,
    multiple: int | None = None,
    timer: timing.Timer | None = None,
    rounds: int = 5,
) -> dict[str, SplitDecision]:
    """One :class:`SplitDecision` per layer of ``layers`` (``{fqn: dense layer of work}``).

    With ``split="latency"``, every layer that passes the MAC rule is timed alone, dense against
    its split at ``rank`` (and at ``rank`` rounded up to ``multiple``), on the input captured from
    one forward of ``work`` on ``example_inputs``; the fastest split is kept when it beats dense.
    ``work`` itself is not changed (timed as an eval-mode, memory-format-matched copy).

    Raises:
        ValueError: as :func:`check_split_args`; the model fails on ``example_inputs``.
    """
    check_split_args(split, example_inputs, runtime, threads, multiple)
    out = _mac_decisions(layers, ranks)
    if split == "macs":
        return out
    from lorita.export import _check_runs

    inputs = timing.as_inputs(example_inputs)
    channels_last = timing.is_channels_last(inputs)
    timed = timing.prepared(work, inputs)
    _check_runs(timed, inputs)
    todo = [f for f, d in out.items() if d.split]
    captured = timing.capture_inputs(timed, todo, inputs)
    timer = timer or timing.BenchmarkTimer(threads=threads, best=True)
    modules = dict(timed.named_modules())
    # same-shaped layers (e.g. a ResNet stage's convs): one measurement, one decision, no re-export
    seen: dict[tuple, list[float]] = {}
    with timing.fixed_threads(threads):
        for fqn in todo:
            d = out[fqn]
            if fqn not in captured:
                out[fqn] = SplitDecision(fqn, False, d.rank, d.rank, d.mac_ratio, None,
                                         "not called on `example_inputs`, so not timed; kept dense")
                continue
            w = layers[fqn].weight
            cands = _candidates(w.shape[0], w[0].numel(), d.rank, multiple)
            key = (timing._signature(modules[fqn], captured[fqn]), tuple(cands))
            if key not in seen:
                seen[key] = _time_layer(fqn, modules[fqn], layers[fqn], captured[fqn], cands, channels_last,
                                        runtime, threads, timer, rounds)
            speed = seen[key]
            out[fqn] = _pick(d, cands, speed, w.shape[0], w[0].numel())
            logger.info("to_low_rank: `%s`: %s", fqn, out[fqn].reason)
    return out


def _pick(d: SplitDecision, cands: list[int], speed: list[float], m: int, n: int) -> SplitDecision:
    best = max(range(len(cands)), key=lambda i: (speed[i], -i))  # ties: the requested rank
    r, s = cands[best], speed[best]
    if s <= 1.0:
        return SplitDecision(d.name, False, d.rank, d.rank, d.mac_ratio, s,
                             f"split measured slower than dense (dense/split latency {s:.2f}); kept dense")
    why = f"split measured faster (dense/split latency {s:.2f})"
    if r != d.rank:
        why += f"; rank rounded up {d.rank}->{r} (at {d.rank}: {speed[0]:.2f})"
    return SplitDecision(d.name, True, d.rank, r, _mac_ratio(m, n, r), s, why)

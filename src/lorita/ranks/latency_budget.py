"""A rank policy with a *measured* budget: the deployed model's latency ``<= fraction`` of dense.

MACs say little about speed for thin layers (issue 9), so :class:`LatencyBudget` measures: it
bisects the MAC fraction ``f`` of :class:`~lorita.ranks.MacBudget` (the same energy-per-MAC
greedy ranks), deploys each candidate with :func:`lorita.to_low_rank` (``split="latency"`` by
default, so only splits that measure faster are made) and times it against the dense model with
:func:`lorita.compare_latency` (interleaved rounds, one process). It keeps the largest ``f`` —
the most singular values, so the least truncation error — whose measured latency meets the budget.
With ``allocation="layer"`` it bisects :class:`~lorita.ranks.LayerBudget`'s fraction instead (the
same share in every layer, blind to the spectra; on wide CNNs its MAC cut turns into more speed:
``benchmarks/results/layer_budget.md``). Assumes latency grows with the fraction (true up to
noise); each step is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lorita import timing
from lorita.latency import compare_latency
from lorita.ranks._budget import check_cap
from lorita.surgery import to_low_rank

__all__ = ["LatencyBudget"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyBudget:
    """Measured latency of the deployed model ``<= fraction`` of the dense model's.

    Args:
        fraction: in (0, 1]; e.g. 0.5 asks for a model twice as fast as dense.
        example_inputs: a tensor or tuple the model accepts, at the batch size and memory format
            you deploy with (latency depends on both).
        runtime: ``"eager"`` or ``"onnxruntime"``; threads: intra-op threads.
        split: how candidates are deployed (``"latency"``: only faster splits; or ``"macs"``).
        steps: bisection steps over the MAC fraction (each deploys and times one model).
        rounds: interleaved timing rounds per step.
        timer: injectable ``timer(fn, module, inputs) -> seconds`` (:mod:`lorita.timing`).
        allocation: how a fraction ``f`` becomes ranks: ``"macs"`` (:class:`MacBudget`'s
            energy-per-MAC greedy, the default) or ``"layer"`` (:class:`LayerBudget`: ``f`` of
            every layer).
        layer_cap: with ``allocation="macs"``, the :class:`MacBudget` ``layer_cap`` at every
            bisection step: no layer keeps more than this share of its own cost (in (0, 1];
            None = uncapped). CLI: ``latency:0.5,cap=0.5``.

    Raises:
        ValueError: ``fraction`` outside (0, 1], missing ``example_inputs``, bad ``runtime``,
            ``split``, ``threads``, ``steps``, ``rounds``, ``allocation`` or ``layer_cap`` (also
            a cap with ``allocation="layer"``, which is already a per-layer share).
    """

    fraction: float
    example_inputs: Any = field(default=None, compare=False, repr=False)
    runtime: str = "eager"
    threads: int = 1
    split: str = "latency"
    steps: int = 6
    rounds: int = 3
    timer: Any = field(default=None, compare=False, repr=False)
    allocation: str = "macs"
    layer_cap: float | None = None

    def __post_init__(self) -> None:
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0.0 < f <= 1.0:
            raise ValueError(f"`fraction` must be in (0, 1], got {f!r}")
        if self.example_inputs is None:
            raise ValueError("LatencyBudget needs `example_inputs` (e.g. torch.zeros(1, 3, 32, 32))")
        timing.as_inputs(self.example_inputs)
        timing.check_runtime(self.runtime)
        timing.check_threads(self.threads)
        if self.split not in ("macs", "latency"):
            raise ValueError(f"`split`={self.split!r} is not one of 'macs', 'latency'")
        if self.allocation not in ("macs", "layer"):
            raise ValueError(f"`allocation`={self.allocation!r} is not one of 'macs', 'layer'")
        check_cap(self.layer_cap)
        if self.layer_cap is not None and self.allocation != "macs":
            raise ValueError("`layer_cap` needs allocation='macs' (allocation='layer' already gives every "
                             "layer the same share)")
        for name in ("steps", "rounds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {v!r}")

    def measured_fraction(self, model: nn.Module, ranks: dict[str, int], layer_timer: Any = None) -> float:
        """Median measured ``t_deployed / t_dense`` of ``to_low_rank(model, ranks, split=self.split)``."""
        timer = self.timer or timing.BenchmarkTimer(threads=self.threads, best=True)
        deployed = to_low_rank(model, ranks, split=self.split, example_inputs=self.example_inputs,
                               runtime=self.runtime, threads=self.threads, timer=layer_timer or timer)
        cmp = compare_latency({"dense": model, "deployed": deployed}, self.example_inputs, self.runtime,
                              self.threads, self.rounds, timer=timer)
        return 1.0 / cmp.speedup["deployed"]

    def choose(self, model: nn.Module, ranks_at: Callable[[float], dict[str, int]]) -> dict[str, int]:
        """Bisect the fraction ``f`` in (0, 1]; ``ranks_at(f)`` gives :class:`MacBudget`'s (or, with
        ``allocation="layer"``, :class:`LayerBudget`'s) ranks (ValueError when ``f`` is below the
        rank-1 floor). Called by :func:`lorita.select_ranks`.

        Raises:
            ValueError: no MAC fraction tried meets the budget (names the best measured fraction).
        """
        layer_timer = timing.CachingTimer(self.timer or timing.BenchmarkTimer(threads=self.threads, best=True))
        lo, hi, best, tried = 0.0, 1.0, None, []
        full = ranks_at(1.0)
        if self.fraction >= 1.0:
            return full
        for _ in range(self.steps):
            f = (lo + hi) / 2
            try:
                ranks = ranks_at(f)
            except ValueError:  # below the rank-1 floor: a larger f
                lo = f
                continue
            layer_timer.rewind()
            got = self.measured_fraction(model, ranks, layer_timer)
            tried.append((f, got))
            logger.info("LatencyBudget: MAC fraction %.4f -> measured latency fraction %.3f", f, got)
            if got <= self.fraction:
                best, lo = ranks, f
            else:
                hi = f
        if best is None:
            f, got = min(tried, key=lambda t: t[1]) if tried else (lo, float("nan"))
            raise ValueError(
                f"`fraction`={self.fraction:g} not met: the fastest model tried (MAC fraction {f:.3g}) measured "
                f"{got:.3g} of the dense latency; raise `fraction`, `steps`, or target more layers"
            )
        return best

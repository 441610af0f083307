"""Measured latency: :func:`measure_latency` (one model, whole and per layer) and
:func:`compare_latency` (several models interleaved in rounds, as ratios).

Latency is reported as seconds per forward call on this machine, for the caller's own
comparisons; claims (benchmarks, ``lorita bench``) use :func:`compare_latency`'s ratios, measured
side by side in one process, since absolute times on a shared machine mean little. Eager timing is
``torch.utils.benchmark.Timer.blocked_autorange`` after a warm-up with ``torch.set_num_threads``
fixed (restored afterwards); ``"onnxruntime"`` exports the model with :func:`lorita.export_onnx`
to a temp file and times an ``InferenceSession`` with ``intra_op_num_threads=threads``. The
timer is injectable (``timer=``, see :mod:`lorita.timing`) so tests are deterministic.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from lorita import timing
from lorita.export import _check_runs
from lorita.surgery import weight_layers
from lorita.targeting import Targets

__all__ = ["LayerLatency", "LatencyResult", "LatencyComparison", "measure_latency", "compare_latency"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerLatency:
    """One targeted layer timed alone on the input it gets inside the model.

    Attributes: name (fqn), kind (class name, e.g. ``Conv2d`` or ``LowRankConv2d``), input_shape,
    median / iqr (seconds per call), samples (count).
    """

    name: str
    kind: str
    input_shape: tuple[int, ...]
    median: float
    iqr: float
    samples: int


@dataclass(frozen=True)
class LatencyResult:
    """:func:`measure_latency`'s result. Times are seconds per forward call of the whole batch.

    Attributes: runtime, threads, input_shapes, channels_last, median, p25, p75, samples,
    layers (``{fqn: LayerLatency}``, empty when ``layers=False``).
    """

    runtime: str
    threads: int
    input_shapes: tuple[tuple[int, ...], ...]
    channels_last: bool
    median: float
    p25: float
    p75: float
    samples: int
    layers: Mapping[str, LayerLatency] = field(default_factory=dict)

    @property
    def iqr(self) -> float:
        return self.p75 - self.p25


@dataclass(frozen=True)
class LatencyComparison:
    """:func:`compare_latency`'s result.

    Attributes:
        reference: the name ratios are relative to.
        speedup: ``{name: median over rounds of t_reference / t_name}`` (> 1: faster than the
            reference; the reference itself is 1.0).
        median: ``{name: median seconds per call over rounds}`` (this machine, for context only).
        rounds: per name, each round's median seconds (interleaved; for spread).
        runtime, threads, input_shapes, channels_last: how it was measured.
    """

    reference: str
    speedup: Mapping[str, float]
    median: Mapping[str, float]
    rounds: Mapping[str, tuple[float, ...]]
    runtime: str
    threads: int
    input_shapes: tuple[tuple[int, ...], ...]
    channels_last: bool


def _start(model: nn.Module, example_inputs: Any, runtime: str, threads: int) -> tuple[nn.Module, tuple]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    timing.check_runtime(runtime)
    timing.check_threads(threads)
    inputs = timing.as_inputs(example_inputs)
    work = timing.prepared(model, inputs)
    _check_runs(work, inputs)  # a wrong input shape: one line naming the shapes
    return work, inputs


def _layer_times(
    work: nn.Module, inputs: tuple, runtime: str, threads: int, timer: timing.Timer, targets: Targets
) -> dict[str, LayerLatency]:
    names = [n for n, _ in weight_layers(work, targets)]
    captured = timing.capture_inputs(work, names, inputs)
    modules = dict(work.named_modules())
    out: dict[str, LayerLatency] = {}
    for name in names:
        if name not in captured:  # an attention projection (not a module) or a layer never called
            continue
        layer = modules[name]
        x = captured[name]
        s = timing.stats(timing.runner(layer, x, runtime, threads, layer=True).time(timer))
        shape = tuple(x[0].shape) if x and isinstance(x[0], Tensor) else ()
        out[name] = LayerLatency(name, type(layer).__name__, shape, s.median, s.iqr, s.n)
    return out


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    runtime: str = "eager",
    threads: int = 1,
    layers: bool = True,
    timer: timing.Timer | None = None,
    target_modules: Targets = None,
) -> LatencyResult:
    """Time one model's forward pass, and each targeted layer on its real input.

    Args:
        model: any module (timed as an eval-mode copy; channels_last when ``example_inputs`` is).
        example_inputs: a tensor or tuple of tensors, e.g. ``torch.randn(64, 3, 32, 32)``; the
            batch size is part of what is measured.
        runtime: ``"eager"`` (PyTorch) or ``"onnxruntime"`` (export to a temp ONNX file, CPU session).
        threads: intra-op threads (``torch.set_num_threads`` restored afterwards / ORT
            ``intra_op_num_threads``).
        layers: also time each targeted weight layer (Linear/Conv and their low-rank forms,
            :func:`lorita.surgery.weight_layers`) alone on the input captured with a forward hook.
        timer: ``timer(fn, module, inputs) -> seconds per call`` (default
            :class:`lorita.timing.BenchmarkTimer`, warm-up then ``blocked_autorange``).
        target_modules: which layers ``layers=True`` times (default all weight layers).

    Returns:
        :class:`LatencyResult` (seconds; median and quartiles of the timer's samples).

    Raises:
        ValueError: unknown ``runtime``, onnxruntime missing, ``threads < 1``, the model fails on
            ``example_inputs`` (the message names the shapes), a timer returning non-positive times.
        TypeError: ``model`` / ``example_inputs`` of the wrong type.
    """
    work, inputs = _start(model, example_inputs, runtime, threads)
    timer = timer or timing.BenchmarkTimer(threads=threads)
    with timing.fixed_threads(threads):
        whole = timing.stats(timing.runner(work, inputs, runtime, threads).time(timer))
        per_layer = _layer_times(work, inputs, runtime, threads, timer, target_modules) if layers else {}
    return LatencyResult(
        runtime, threads, tuple(tuple(t.shape) for t in inputs), timing.is_channels_last(inputs),
        whole.median, whole.p25, whole.p75, whole.n, per_layer,
    )


def compare_latency(
    models: Mapping[str, nn.Module],
    example_inputs: Any,
    runtime: str = "eager",
    threads: int = 1,
    rounds: int = 5,
    reference: str | None = None,
    timer: timing.Timer | None = None,
) -> LatencyComparison:
    """Time several models on the same inputs, interleaved in ``rounds`` (each round times every
    model once, the order rotated per round), and return speedups relative to ``reference``.

    Interleaving puts each model under the same machine load; the per-round ratio
    ``t_reference / t_model`` cancels drift, and its median over rounds is reported.

    Args:
        models: ``{name: model}`` (at least one); e.g. ``{"dense": m, "low-rank": lr}``.
        example_inputs, runtime, threads, timer: as :func:`measure_latency`.
        rounds: number of interleaved rounds (>= 1).
        reference: the name ratios are relative to (default: the first).

    Returns:
        :class:`LatencyComparison`.

    Raises:
        ValueError: as :func:`measure_latency`, empty ``models``, unknown ``reference``, ``rounds < 1``.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("`models` must be a non-empty dict {name: model}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"`rounds` must be an int >= 1, got {rounds!r}")
    reference = next(iter(models)) if reference is None else reference
    if reference not in models:
        raise ValueError(f"`reference`={reference!r} is not one of the models {list(models)}")
    timer = timer or timing.BenchmarkTimer(threads=threads, best=True)
    runners = {}
    for name, model in models.items():
        try:
            work, inputs = _start(model, example_inputs, runtime, threads)
        except ValueError as exc:
            raise ValueError(f"model {name!r}: {exc}") from None
        runners[name] = timing.runner(work, inputs, runtime, threads)
    names = list(models)
    with timing.fixed_threads(threads):
        times = timing.interleaved([runners[n] for n in names], timer, rounds)
    per_round = dict(zip(names, times, strict=True))
    speedup = {
        n: 1.0 if n == reference else statistics.median(
            a / b for a, b in zip(per_round[reference], per_round[n], strict=True)
        )
        for n in names
    }
    return LatencyComparison(
        reference, speedup, {n: statistics.median(v) for n, v in per_round.items()},
        {n: tuple(v) for n, v in per_round.items()}, runtime, threads,
        tuple(tuple(t.shape) for t in inputs), timing.is_channels_last(inputs),
    )

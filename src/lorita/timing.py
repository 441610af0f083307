"""Low-level timing harness shared by :mod:`lorita.latency` and :mod:`lorita.split`.

One injectable timer protocol: ``timer(fn, module, inputs) -> samples`` where ``fn()`` runs the
thing once (an eager module call or an onnxruntime session run), ``module`` is the PyTorch module
it computes and ``inputs`` the tensors it is called with; ``samples`` are seconds per call. The
default, :class:`BenchmarkTimer`, is ``torch.utils.benchmark.Timer(...).blocked_autorange()`` after
a warm-up; a test passes a fake timer (e.g. a cost computed from ``module``'s shapes) and gets
deterministic decisions. Nothing here imports :mod:`lorita.surgery` (it imports us via split).
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "RUNTIMES",
    "Timer",
    "BenchmarkTimer",
    "Stats",
    "stats",
    "check_runtime",
    "check_threads",
    "as_inputs",
    "is_channels_last",
    "prepared",
    "fixed_threads",
    "capture_inputs",
    "Runner",
    "runner",
    "interleaved",
    "CachingTimer",
]

RUNTIMES = ("eager", "onnxruntime")

#: ``timer(fn, module, inputs) -> seconds per call, one or more samples``.
Timer = Callable[[Callable[[], Any], nn.Module, tuple], Sequence[float]]


@dataclass(frozen=True)
class BenchmarkTimer:
    """The default timer: ``warmup`` calls, then ``torch.utils.benchmark.Timer.blocked_autorange``.

    ``min_run_time`` (seconds) bounds each measurement; ``threads`` is passed to the Timer, which
    otherwise forces 1 torch thread while it measures. Returns the per-run times (seconds), or
    with ``best=True`` only the fastest block: on a shared machine the least-disturbed run, robust
    to preemption spikes (interleaved rounds then give the median of these).
    """

    min_run_time: float = 0.05
    warmup: int = 2
    threads: int = 1
    best: bool = False

    def __call__(self, fn: Callable[[], Any], module: nn.Module, inputs: tuple) -> list[float]:
        from torch.utils import benchmark

        for _ in range(self.warmup):
            fn()
        t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=self.threads)
        times = [float(x) for x in t.blocked_autorange(min_run_time=self.min_run_time).times]
        return [min(times)] if self.best else times


@dataclass(frozen=True)
class Stats:
    """Summary of timing samples, seconds: median, 25th/75th percentiles, IQR, sample count."""

    median: float
    p25: float
    p75: float
    n: int

    @property
    def iqr(self) -> float:
        return self.p75 - self.p25


def stats(samples: Sequence[float]) -> Stats:
    """Median and quartiles of ``samples`` (seconds; ``statistics.quantiles``, 'inclusive').

    Raises:
        ValueError: no samples, or a sample that is not a finite positive number (a bad timer).
    """
    xs = [float(s) for s in samples]
    if not xs or not all(x > 0 and x == x and x != float("inf") for x in xs):
        raise ValueError(f"`timer` must return finite positive seconds per call, got {list(samples)[:5]!r}")
    if len(xs) == 1:
        return Stats(xs[0], xs[0], xs[0], 1)
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return Stats(statistics.median(xs), q[0], q[2], len(xs))


def check_runtime(runtime: str) -> str:
    """``runtime`` itself, or ValueError naming it; onnxruntime must be importable for ``"onnxruntime"``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"`runtime`={runtime!r} is not one of {', '.join(map(repr, RUNTIMES))}")
    if runtime == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ValueError(
                "`runtime`='onnxruntime' needs the optional package onnxruntime; pip install 'lorita[onnx]'"
            ) from None
    return runtime


def check_threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"`threads` must be an int >= 1, got {threads!r}")
    return threads


def as_inputs(example_inputs: Any) -> tuple[Tensor, ...]:
    inputs = tuple(example_inputs) if isinstance(example_inputs, tuple | list) else (example_inputs,)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError("`example_inputs` must be a tensor or a tuple of tensors the model accepts")
    return inputs


def is_channels_last(inputs: tuple[Tensor, ...]) -> bool:
    """True when a 4-D input is stored channels_last (and not also plain contiguous)."""
    return any(
        t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        for t in inputs
    )


def prepared(model: nn.Module, inputs: tuple[Tensor, ...]) -> nn.Module:
    """An eval-mode deep copy of ``model``, channels_last when the inputs are (the memory format
    a deployment would use); the caller's model is not changed."""
    work = copy.deepcopy(model).eval()
    if is_channels_last(inputs):
        work = work.to(memory_format=torch.channels_last)
    return work


@contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block, the previous count restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def capture_inputs(model: nn.Module, names: Sequence[str], inputs: tuple[Tensor, ...]) -> dict[str, tuple]:
    """The positional inputs each named module gets in one no-grad forward (first call kept),
    cloned with their memory format; names that are not modules or never called are absent."""
    modules = dict(model.named_modules())
    got: dict[str, tuple] = {}
    handles = []

    def hook(name: str) -> Callable:
        def fn(mod: nn.Module, args: tuple) -> None:
            if name not in got:
                got[name] = tuple(a.detach().clone() if isinstance(a, Tensor) else a for a in args)

        return fn

    for n in names:
        if n in modules:
            handles.append(modules[n].register_forward_pre_hook(hook(n)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return got


@dataclass
class Runner:
    """One thing to time: ``fn()`` runs ``module`` on ``inputs`` once (eager or an ORT session)."""

    fn: Callable[[], Any]
    module: nn.Module
    inputs: tuple

    def time(self, timer: Timer) -> list[float]:
        return [float(s) for s in timer(self.fn, self.module, self.inputs)]


def _onnx_bytes(module: nn.Module, inputs: tuple[Tensor, ...], fast: bool) -> bytes:
    """The module as ONNX bytes: :func:`lorita.export_onnx` (the shipped path, via a temp file),
    or with ``fast`` the TorchScript exporter (``dynamo=False``, ~5 ms instead of ~1 s; used for
    single layers, whose graphs — one Conv/Gemm or two — ORT optimizes the same way)."""
    import io
    import warnings

    if fast:
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, inputs, buf, dynamo=False)
            return buf.getvalue()
        except Exception:  # noqa: BLE001 - any exporter failure: fall back to the shipped path
            pass
    from lorita.export import export_onnx

    fd, path = tempfile.mkstemp(suffix=".onnx", prefix="lorita-latency-")
    os.close(fd)
    try:
        export_onnx(module, inputs, path, dynamic_batch=False, check=False)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def _ort_runner(module: nn.Module, inputs: tuple[Tensor, ...], threads: int, fast: bool) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(_onnx_bytes(module, inputs, fast), opts, providers=["CPUExecutionProvider"])
    feeds: Mapping[str, Any] = {
        i.name: t.detach().contiguous().cpu().numpy() for i, t in zip(sess.get_inputs(), inputs, strict=True)
    }
    return Runner(lambda: sess.run(None, feeds), module, inputs)


def runner(module: nn.Module, inputs: tuple, runtime: str, threads: int, layer: bool = False) -> Runner:
    """A :class:`Runner` for ``module`` on ``inputs``: a no-grad eager call, or an onnxruntime
    session (``intra_op_num_threads=threads``, sequential) of the module exported with
    :func:`lorita.export_onnx` to a temp file (removed once the session is built); ``layer=True``
    (a single layer or low-rank pair) exports with the fast TorchScript exporter instead."""
    if runtime == "onnxruntime":
        return _ort_runner(module, inputs, threads, fast=layer)

    def call() -> Any:
        with torch.no_grad():
            return module(*inputs)

    return Runner(call, module, inputs)


def interleaved(runners: Sequence[Runner], timer: Timer, rounds: int) -> list[list[float]]:
    """Median seconds per call of each runner in each of ``rounds`` rounds; every round times all
    runners once, the order rotated per round, so each sees the same machine load."""
    out: list[list[float]] = [[] for _ in runners]
    for r in range(rounds):
        order = list(range(len(runners)))
        k = r % len(order)
        for i in order[k:] + order[:k]:
            out[i].append(stats(runners[i].time(timer)).median)
    return out


def _signature(module: nn.Module, inputs: tuple) -> tuple:
    def desc(t: Any) -> Any:
        return (tuple(t.shape), tuple(t.stride()), str(t.dtype)) if isinstance(t, Tensor) else repr(t)

    return (repr(module), tuple((n, desc(p)) for n, p in module.named_parameters()), tuple(desc(x) for x in inputs))


class CachingTimer:
    """Wraps a timer and replays its samples for modules of the same signature (``repr``,
    parameter shapes/strides, input shapes/strides): a layer's cost depends on its shapes, not its
    values. The k-th call for a signature since :meth:`rewind` replays the k-th measurement (made
    on first need), so interleaved rounds stay distinct measurements. Used by
    :class:`lorita.ranks.LatencyBudget`, which times the same candidate layers at every step."""

    def __init__(self, timer: Timer) -> None:
        self.timer = timer
        self._seen: dict[tuple, list[list[float]]] = {}
        self._calls: dict[tuple, int] = {}

    def rewind(self) -> None:
        """Start replaying from each signature's first measurement again."""
        self._calls.clear()

    def __call__(self, fn: Callable[[], Any], module: nn.Module, inputs: tuple) -> list[float]:
        key = _signature(module, inputs)
        k = self._calls.get(key, 0)
        self._calls[key] = k + 1
        got = self._seen.setdefault(key, [])
        if k >= len(got):
            got.append([float(s) for s in self.timer(fn, module, inputs)])
        return got[k]

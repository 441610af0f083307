"""Params and MACs, per layer and in total.

MACs (multiply-accumulates) are counted **per sample** by running the model once under
:class:`torch.utils.flop_counter.FlopCounterMode` (PyTorch's own counter: matmuls, convolutions,
attention) and halving its FLOPs: FLOPs = 2·MACs, always reported under that name.
Element-wise ops, norms and activations are not counted (as in FlopCounterMode).

Rows are the model's weight layers (Linear, Conv1d/2d/3d, lorita's factorized and low-rank layers,
attention modules); everything else is summed in an ``(other)`` row. Params include biases;
a parameter shared by several modules is counted once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from lorita.layers import FactorizedLayer, LowRankLayer
from lorita.layers.transposed import is_transposed_linear
from lorita.targeting import is_inside

__all__ = ["LayerCost", "CostReport", "count_params", "count_macs", "ROW_TYPES"]

ROW_TYPES: tuple[type, ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.MultiheadAttention,
    nn.Embedding,
    FactorizedLayer,
    LowRankLayer,
)


@dataclass
class LayerCost:
    """One row: ``name`` (fqn), ``kind`` (class name), ``params``, ``macs`` per sample (or None),
    ``rank`` (low-rank layers) and ``depth`` (factorized layers)."""

    name: str
    kind: str
    params: int
    macs: int | None = None
    rank: int | None = None
    depth: int | None = None


@dataclass
class CostReport:
    """Per-layer costs and totals. ``macs`` are per sample; ``flops == 2 * macs``."""

    rows: list[LayerCost] = field(default_factory=list)
    total_params: int = 0
    total_macs: int | None = None

    @property
    def total_flops(self) -> int | None:
        """FLOPs per sample = 2 · MACs."""
        return None if self.total_macs is None else 2 * self.total_macs

    def row(self, name: str) -> LayerCost:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row named {name!r}; rows: {[r.name for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) for r in self.rows],
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "total_flops": self.total_flops,
        }

    def table(self) -> str:
        """Markdown table: layer, kind, rank/depth, params and, once MACs were counted
        (:func:`count_macs`), MACs per sample; a params-only report has no MACs column."""
        with_macs = self.total_macs is not None or any(r.macs is not None for r in self.rows)

        def line(cells: list[str], macs: int | None, bold: bool = False) -> str:
            if with_macs:
                cells = [*cells, "" if macs is None else (f"**{macs:,}**" if bold else f"{macs:,}")]
            return "| " + " | ".join(cells) + " |"

        lines = [
            "| layer | kind | rank/depth | params |" + (" MACs |" if with_macs else ""),
            "|---|---|---|---:|" + ("---:|" if with_macs else ""),
        ]
        for r in self.rows:
            rd = f"r={r.rank}" if r.rank is not None else (f"N={r.depth}" if r.depth is not None else "")
            lines.append(line([r.name, r.kind, rd, f"{r.params:,}"], r.macs))
        lines.append(line(["**total**", "", "", f"**{self.total_params:,}**"], self.total_macs, bold=True))
        return "\n".join(lines)


def _row_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    rows: list[tuple[str, nn.Module]] = []
    taken: list[str] = []
    for fqn, mod in model.named_modules():
        if fqn == "" or not (isinstance(mod, ROW_TYPES) or is_transposed_linear(mod)):
            continue
        if is_inside(fqn, taken):
            continue  # inside a row module (e.g. the two halves of a LowRankLinear)
        rows.append((fqn, mod))
        taken.append(fqn)
    return rows


def _unique_numel(params: Iterable[nn.Parameter], seen: set[int]) -> int:
    total = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def count_params(model: nn.Module) -> CostReport:
    """Parameters per weight layer and in total (biases included, shared parameters once)."""
    seen: set[int] = set()
    report = CostReport()
    for fqn, mod in _row_modules(model):
        report.rows.append(
            LayerCost(
                fqn,
                type(mod).__name__,
                _unique_numel(mod.parameters(), seen),
                rank=mod.rank if isinstance(mod, LowRankLayer) else None,
                depth=mod.depth if isinstance(mod, FactorizedLayer) else None,
            )
        )
    other = _unique_numel(model.parameters(), seen)
    if other:
        report.rows.append(LayerCost("(other)", "-", other))
    report.total_params = sum(r.params for r in report.rows)
    return report


def _as_tuple(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def count_macs(model: nn.Module, example_inputs: Any) -> CostReport:
    """MACs per sample (and params), per weight layer and in total.

    Args:
        model: any module; run once in eval mode under ``torch.no_grad``.
        example_inputs: a tensor or tuple of tensors accepted by ``model(*inputs)``; the first
            tensor's dim 0 is the batch size (MACs are divided by it).

    Returns:
        :class:`CostReport` with ``macs`` filled (``total_flops == 2 * total_macs``).

    Raises:
        ValueError: if the forward pass fails (the message carries the original error).
    """
    inputs = _as_tuple(example_inputs)
    first = next((t for t in inputs if isinstance(t, Tensor)), None)
    batch = int(first.shape[0]) if first is not None and first.dim() > 0 else 1
    report = count_params(model)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    # nn.MultiheadAttention's fused inference fast path is invisible to FlopCounterMode: count
    # the standard path (same math), then restore the user's setting.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), counter:
            model(*inputs)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"count_macs: the model failed on `example_inputs`: {exc}") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    by_name = {}
    for key, ops in counts.items():
        name = key[len(root) + 1 :] if key.startswith(root + ".") else key
        by_name[name] = sum(ops.values())
    total_flops = sum(counts.get("Global", {}).values())
    layer_sum = 0
    for r in report.rows:
        if r.name == "(other)":
            continue
        r.macs = by_name.get(r.name, 0) // 2 // batch
        layer_sum += r.macs
    total = total_flops // 2 // batch
    other = total - layer_sum
    if other:
        existing = [r for r in report.rows if r.name == "(other)"]
        if existing:
            existing[0].macs = other
        else:
            report.rows.append(LayerCost("(other)", "-", 0, macs=other))
    else:
        for r in report.rows:
            if r.name == "(other)":
                r.macs = 0
    report.total_macs = total
    return report

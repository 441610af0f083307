"""Params and MACs, per layer and in total.

MACs (multiply-accumulates) are counted **per sample** by running the model once under
:class:`torch.utils.flop_counter.FlopCounterMode` (PyTorch's own counter: matmuls, convolutions,
attention) and halving its FLOPs: FLOPs = 2·MACs, always reported under that name.
Element-wise ops, norms and activations are not counted (as in FlopCounterMode).

Two kernels PyTorch's counter has no formula for are added through its ``custom_mapping``:

* ``aten.mkldnn_rnn_layer`` (``nn.LSTM``'s fused oneDNN kernel on CPU, one call per layer and
  direction): each weight matrix is applied once per time step and sequence, so MACs = steps ·
  batch · ``4H·(in + H)`` per layer and direction (``LSTM(32, 64)``: 24,576 per step, 294,912 for
  12 steps). ``nn.GRU``/``nn.RNN`` and the non-oneDNN LSTM paths (``proj_size``, float64, packed
  sequences) already reach the counter as matmuls (``3H·(in+H)``, ``H·(in+H)`` per step).
* ``aten._scaled_dot_product_flash_attention_for_cpu`` (SDPA on CPU, used by
  ``nn.MultiheadAttention`` with ``need_weights=False`` and the stock transformer layers): the
  ``QKᵀ`` and ``AV`` products, ``B·H·L·S·E`` MACs each (:func:`torch.utils.flop_counter.sdpa_flop_count`).

A module with parameters for which no MACs were counted (an RNN kernel on another device, a
custom op…) is logged as a WARNING by name, listed in :attr:`CostReport.uncounted`, and the total
is then marked as a lower bound (:attr:`CostReport.macs_complete` is False). Modules whose
parameters are only used element-wise or as a lookup (norms, embeddings, PReLU) are expected to
have no MACs and are not flagged.

Rows are the model's weight layers (Linear, Conv1d/2d/3d, LSTM/GRU/RNN, lorita's factorized and
low-rank layers, attention modules); everything else is summed in an ``(other)`` row. Params
include biases; a parameter shared by several modules is counted once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from lorita.layers import FactorizedLayer, LowRankLayer
from lorita.layers.transposed import is_transposed_linear
from lorita.targeting import is_inside

__all__ = ["LayerCost", "CostReport", "count_params", "count_macs", "ROW_TYPES"]

logger = logging.getLogger(__name__)

ROW_TYPES: tuple[type, ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.MultiheadAttention,
    nn.LSTM,
    nn.GRU,
    nn.RNN,
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
    #: ``{fqn: class name}`` of modules with parameters whose MACs the counter did not see; when
    #: not empty, ``total_macs`` is a lower bound.
    uncounted: dict[str, str] = field(default_factory=dict)

    @property
    def macs_complete(self) -> bool:
        """False when MACs were counted but some modules' MACs are missing (see ``uncounted``)."""
        return self.total_macs is not None and not self.uncounted

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
            "macs_complete": self.macs_complete,
            "uncounted": dict(self.uncounted),
        }

    def table(self) -> str:
        """Markdown table: layer, kind, rank/depth, params and, once MACs were counted
        (:func:`count_macs`), MACs per sample; a params-only report has no MACs column. When
        some modules' MACs were not counted the total reads ``≥ N`` and a line below names them."""
        with_macs = self.total_macs is not None or any(r.macs is not None for r in self.rows)

        def line(cells: list[str], macs: int | None, bold: bool = False) -> str:
            if with_macs:
                low = "≥ " if bold and self.uncounted else ""
                cells = [*cells, "" if macs is None else (f"**{low}{macs:,}**" if bold else f"{macs:,}")]
            return "| " + " | ".join(cells) + " |"

        lines = [
            "| layer | kind | rank/depth | params |" + (" MACs |" if with_macs else ""),
            "|---|---|---|---:|" + ("---:|" if with_macs else ""),
        ]
        for r in self.rows:
            rd = f"r={r.rank}" if r.rank is not None else (f"N={r.depth}" if r.depth is not None else "")
            lines.append(line([r.name, r.kind, rd, f"{r.params:,}"], r.macs))
        lines.append(line(["**total**", "", "", f"**{self.total_params:,}**"], self.total_macs, bold=True))
        if with_macs and self.uncounted:
            lines.append("")
            lines.append(f"MACs not counted for {_names(self.uncounted)}; the total is a lower bound.")
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


def _names(uncounted: dict[str, str]) -> str:
    return ", ".join(f"`{n or '(the model itself)'}` ({k})" for n, k in uncounted.items())


def _mkldnn_rnn_flops(
    input: Any, weight_ih: Any, weight_hh: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """FLOPs of ``aten.mkldnn_rnn_layer`` (one layer, one direction of ``nn.LSTM`` on CPU; arguments
    arrive as shapes): each of ``weight_ih (4H, in)`` and ``weight_hh (4H, H)`` is applied once per
    time step and sequence, ``input`` is ``(T, B, in)`` or ``(B, T, in)``."""
    rows = input[0] * input[1]
    return 2 * rows * (math.prod(weight_ih) + math.prod(weight_hh))


def _sdpa_cpu_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of SDPA's CPU kernel: ``QKᵀ`` and ``AV`` (PyTorch's own :func:`sdpa_flop_count`)."""
    return sdpa_flop_count(query, key, value)


_CUSTOM_FLOPS = {
    torch.ops.aten.mkldnn_rnn_layer: _mkldnn_rnn_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
}
# Modules whose parameters are used element-wise or as a lookup: no MACs expected.
_NO_MACS: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.Embedding, nn.EmbeddingBag,
    nn.PReLU,
)


def _uncounted(model: nn.Module, by_name: dict[str, int]) -> dict[str, str]:
    """Modules owning parameters (directly) under which the counter saw no FLOPs at all."""
    out: dict[str, str] = {}
    # nn.MultiheadAttention reads out_proj's weight as a tensor: counted under the attention.
    attn = [f for f, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for fqn, mod in model.named_modules():
        if isinstance(mod, _NO_MACS) or not any(p.numel() for p in mod.parameters(recurse=False)):
            continue
        if any(fqn.startswith(n + ".") for n in [*out, *attn]):
            continue
        if by_name.get(fqn if fqn else "Global", 0) == 0:
            out[fqn] = type(mod).__name__
    return out


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
        :class:`CostReport` with ``macs`` filled (``total_flops == 2 * total_macs``). Modules with
        parameters whose MACs were not seen are logged (WARNING, by name) and listed in
        ``uncounted``; the total is then a lower bound (``macs_complete`` is False).

    Raises:
        ValueError: if the forward pass fails (the message carries the original error).
    """
    inputs = _as_tuple(example_inputs)
    first = next((t for t in inputs if isinstance(t, Tensor)), None)
    batch = int(first.shape[0]) if first is not None and first.dim() > 0 else 1
    report = count_params(model)
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS)
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
    report.uncounted = _uncounted(model, by_name)
    if report.uncounted:
        logger.warning(
            "count_macs: no MACs counted for %s (modules with parameters whose kernels PyTorch's flop "
            "counter has no formula for); the total %s MACs per sample is a lower bound",
            _names(report.uncounted), f"{total:,}",
        )
    return report

"""What a rank policy sees of each targeted layer: :class:`LayerInfo` (singular values, matricized
shape, output positions) and :func:`layer_infos`, which gathers them from a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lorita import linalg
from lorita.layers.attention import FactorizedMultiheadAttention
from lorita.surgery import effective_weight, weight_layers
from lorita.targeting import Targets

__all__ = ["LayerInfo", "layer_infos"]


@dataclass(frozen=True)
class LayerInfo:
    """What a policy knows about one layer.

    Attributes:
        name: fqn. S: singular values, descending. shape: ``(m, n)`` matricized weight shape.
        positions: output positions per sample (1 for a Linear on a vector; ``H_out·W_out`` for a
            conv; tokens for a Linear on a sequence); ``None`` when unknown.
    """

    name: str
    S: Tensor
    shape: tuple[int, int]
    positions: int | None = None

    @property
    def max_rank(self) -> int:
        return min(self.shape)



_ATTENTION = (nn.MultiheadAttention, FactorizedMultiheadAttention)


def _positions(model: nn.Module, names: list[str], example_inputs: Any) -> dict[str, int]:
    inputs = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
    first = next((t for t in inputs if isinstance(t, Tensor)), None)
    batch = first.shape[0] if first is not None and first.dim() > 0 else 1
    modules = dict(model.named_modules())
    found: dict[str, int] = {}
    handles = []

    def hook(name: str) -> Callable:
        def fn(mod: nn.Module, args: Any, out: Tensor) -> None:
            if isinstance(mod, _ATTENTION):  # `attn.in_proj` / `attn.out_proj`: one position per token
                out = out[0]
                found[name] = found.get(name, 0) + out.numel() // out.shape[-1]
                return
            w = effective_weight(mod)
            found[name] = found.get(name, 0) + out.numel() // w.shape[0]

        return fn

    for n in names:
        # a projection of nn.MultiheadAttention is read as a tensor: hook the attention itself
        parent = modules.get(n.rpartition(".")[0])
        target = parent if isinstance(parent, _ATTENTION) else modules[n]
        handles.append(target.register_forward_hook(hook(n)))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(*inputs)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(
            f"layers {missing} were not called by the forward pass on `example_inputs`; "
            f"exclude them or check the inputs"
        )
    return {n: max(1, v // max(batch, 1)) for n, v in found.items()}


def layer_infos(
    model: nn.Module,
    target_modules: Targets = None,
    exclude_modules: Targets = None,
    example_inputs: Any = None,
) -> list[LayerInfo]:
    """Spectra and shapes of the targeted layers (positions filled when ``example_inputs`` given)."""
    layers = weight_layers(model, target_modules, exclude_modules)
    infos = []
    pos = _positions(model, [n for n, _ in layers], example_inputs) if example_inputs is not None else {}
    for fqn, mod in layers:
        w = effective_weight(mod)
        try:
            linalg.ensure_finite(w, "weight")
        except ValueError as exc:
            raise ValueError(f"`{fqn}`: {exc}") from None
        mat = linalg.matricize(w)
        S = torch.linalg.svdvals(mat.to(linalg._compute_dtype(mat))).cpu()
        infos.append(LayerInfo(fqn, S, (int(mat.shape[0]), int(mat.shape[1])), pos.get(fqn)))
    return infos

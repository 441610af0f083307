"""Keep PyTorch's fused transformer fast paths away from layers that hold lorita layers.

In eval mode ``nn.TransformerEncoderLayer.forward`` (and ``nn.TransformerEncoder.forward`` with a
``src_key_padding_mask``) may run one fused kernel, ``torch._transformer_encoder_layer_fwd``, that
reads the *dense tensors* ``linear1.weight``, ``linear2.weight``, ``self_attn.out_proj.weight`` …
instead of calling the submodules. A :class:`~lorita.LowRankLinear` (or any factorized layer) has
no such dense ``weight``, and faking one would silently run the dense math the low-rank form
exists to avoid. So a layer that holds a lorita layer takes PyTorch's standard path (the same
math, module by module — the one it takes in training mode), via the two switches PyTorch itself
checks before the fused path:

* ``TransformerEncoderLayer.activation_relu_or_gelu`` — read only by the fast path (the standard
  path calls ``self.activation``); set to ``0``;
* ``TransformerEncoder.use_nested_tensor`` — set to ``False`` when any of its layers holds a
  lorita layer (the nested-tensor path reads the first layer's dense weights too).

The original value is kept on the module (``_lorita_fastpath``) and put back once the layer is
dense again (:func:`lorita.merge`), so a merged model runs exactly as the stock one did.
``nn.TransformerDecoderLayer`` has no fused path; ``nn.MultiheadAttention`` is never split by
lorita (truncated in place, see :mod:`lorita.layers.attention`), so its own fast path reads
correct dense weights.

:func:`sync_fast_paths` is called by every swap lorita makes (:mod:`lorita.surgery`, rank
search, :func:`lorita.load`); call it yourself after swapping lorita layers in by hand.
"""

from __future__ import annotations

from torch import nn

from lorita.layers.attention import FactorizedMultiheadAttention
from lorita.layers.conv import FactorizedConv2d, LowRankConv2d
from lorita.layers.linear import FactorizedLinear, LowRankLinear

__all__ = ["sync_fast_paths", "LORITA_TYPES"]

#: Every lorita layer class (subclasses — Conv1d and GPT-2 forms — included by isinstance).
LORITA_TYPES: tuple[type, ...] = (
    FactorizedLinear, FactorizedConv2d, FactorizedMultiheadAttention, LowRankLinear, LowRankConv2d,
)

_SAVED = "_lorita_fastpath"
# module type -> (attribute PyTorch checks before its fused path, the value that turns it off)
_SWITCHES: dict[type, tuple[str, object]] = {
    nn.TransformerEncoderLayer: ("activation_relu_or_gelu", 0),
    nn.TransformerEncoder: ("use_nested_tensor", False),
}


def _holds_lorita(module: nn.Module) -> bool:
    return any(isinstance(m, LORITA_TYPES) for m in module.modules())


def _sync_one(module: nn.Module) -> None:
    attr, off = _SWITCHES[type(module)]
    saved = module.__dict__.get(_SAVED)
    if _holds_lorita(module):
        if saved is None:
            module.__dict__[_SAVED] = {attr: getattr(module, attr)}
        setattr(module, attr, off)
    elif saved is not None:
        setattr(module, attr, saved[attr])
        del module.__dict__[_SAVED]


def sync_fast_paths(model: nn.Module, fqn: str | None = None) -> None:
    """Turn PyTorch's fused encoder fast path off where a stock encoder holds a lorita layer, and
    back on where it no longer does (see the module docstring). In place; returns ``None``.

    Args:
        model: any module.
        fqn: if given, only ``model``'s modules on the path to ``fqn`` (the one just swapped) are
            looked at; ``None`` looks at every module.
    """
    if fqn is None:
        targets = [m for m in model.modules() if type(m) in _SWITCHES]
    else:
        parts = fqn.split(".") if fqn else []
        targets, mod = [model], model
        for part in parts[:-1]:
            mod = getattr(mod, part, None)
            if not isinstance(mod, nn.Module):
                break
            targets.append(mod)
        targets = [m for m in targets if type(m) in _SWITCHES]
    for m in targets:
        _sync_one(m)

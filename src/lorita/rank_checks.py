"""Validation of ``{layer name: rank}`` mappings before model surgery (LoRITa §2.9: truncation
and the low-rank split apply to Linear, Conv1d/Conv2d, GPT-2 Conv1D and attention projections).

Every check runs before anything is modified, so a bad mapping never leaves a half-changed model.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from lorita.layers import kinds
from lorita.layers.attention import PROJECTIONS, FactorizedMultiheadAttention, ProjectionView
from lorita.targeting import aliases, tied_modules

__all__ = ["check_ranks"]


def check_ranks(model: nn.Module, ranks: Mapping[str, int]) -> dict[str, nn.Module]:
    """Check a ``{fqn: rank}`` mapping against ``model`` before any surgery and return
    ``{fqn: layer}`` (attention projections as :class:`~lorita.layers.attention.ProjectionView`).

    Only the names and kinds are checked here; each rank's range is checked where the layer's
    shape is known (:func:`lorita.truncate`, :func:`lorita.to_low_rank`).

    Raises:
        TypeError: ``model`` not a module, ``ranks`` not a mapping of str keys, a layer still
            factorized (merge first) or of a kind ranks do not apply to.
        ValueError: empty ``ranks``, an unknown name, a whole ``nn.MultiheadAttention`` (give its
            projections), a layer whose weight is tied to another module or a module registered
            under two names (both named), a layer lorita keeps dense (with the reason).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(ranks, Mapping):
        raise TypeError(f"`ranks` must be a dict {{layer name: int}}, got {type(ranks).__name__}")
    if not ranks:
        raise ValueError("`ranks` is empty; pass {layer name: rank} (e.g. from lorita.select_ranks)")
    modules = dict(model.named_modules())
    tied, alias = tied_modules(model), aliases(model)
    layers: dict[str, nn.Module] = {}
    for fqn in ranks:
        if not isinstance(fqn, str):
            raise TypeError(f"`ranks` keys must be layer names (str), got {fqn!r}")
        mod = modules.get(fqn)
        parent_name, _, leaf = fqn.rpartition(".")
        parent = modules.get(parent_name)
        owner = parent_name if isinstance(parent, nn.MultiheadAttention) and leaf in PROJECTIONS else fqn
        if owner in alias:
            raise ValueError(
                f"`{fqn}`: the same module object is also registered as {alias[owner]}; replacing one name "
                f"would leave the other dense — drop `{fqn}` from `ranks`, or register distinct modules"
            )
        if owner in tied:
            raise ValueError(
                f"`{fqn}`: its weight is shared with `{tied[owner]}` (tied weights); truncating or splitting it "
                f"would change `{tied[owner]}` too, or break the tie and grow the params — drop `{fqn}` from "
                f"`ranks` (lorita.select_ranks skips it), or untie the weights first"
            )
        if isinstance(parent, nn.MultiheadAttention) and leaf in PROJECTIONS:
            reason = kinds.dense_reason(parent)
            if reason:
                raise ValueError(f"`{parent_name}`: {reason}; drop `{fqn}` from `ranks`")
            layers[fqn] = ProjectionView(parent, leaf)
            continue
        if mod is None:
            raise ValueError(f"`{fqn}` in `ranks` is not a module of the model; check the layer names")
        if isinstance(mod, kinds.FACTORIZED_TYPES) or isinstance(parent, FactorizedMultiheadAttention):
            raise TypeError(f"`{fqn}` is still factorized; call lorita.merge(model) before truncating")
        if isinstance(mod, nn.MultiheadAttention):
            raise ValueError(
                f"`{fqn}` is an nn.MultiheadAttention; give ranks for `{fqn}.in_proj` and `{fqn}.out_proj`"
            )
        if type(mod) not in kinds.DENSE_TYPES and not kinds.is_transposed_linear(mod):
            raise TypeError(
                f"`{fqn}` is a {type(mod).__name__}; ranks apply to Linear, Conv1d/Conv2d, GPT-2 Conv1D and "
                f"attention projections only"
            )
        reason = kinds.dense_reason(mod)
        if reason:
            raise ValueError(f"`{fqn}`: {reason}; drop it from `ranks`")
        layers[fqn] = mod
    return layers

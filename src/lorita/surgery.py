"""Model surgery: factorize, merge, truncate, to_low_rank (LoRITa, arXiv 2405.03089, §2).

Every function follows one rule: it returns the model; with ``inplace=False`` (the default) it
works on a deep copy and leaves the input untouched; it builds every replacement before swapping
any, so on an error the model (copy or not) is never half-modified. Errors name the layer.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lorita import linalg
from lorita.layers import FactorSide, ForwardMode, Init, kinds
from lorita.layers.attention import PROJECTIONS, FactorizedMultiheadAttention, ProjectionView
from lorita.layers.base import INITS
from lorita.layers.fastpath import sync_fast_paths
from lorita.rank_checks import check_ranks
from lorita.targeting import TargetPlan, Targets, child_name, find_targets, is_inside

__all__ = [
    "factorize",
    "factorize_plan",
    "merge",
    "truncate",
    "to_low_rank",
    "singular_values",
    "effective_weight",
    "weight_layers",
    "FACTORIZED_TYPES",
    "LOW_RANK_TYPES",
]

logger = logging.getLogger(__name__)

# Layer kinds, their forms and skip reasons live in lorita.layers.kinds (Linear, Conv1d/2d,
# MultiheadAttention, GPT-2 Conv1D); matching is on exact types.
FACTORIZED_TYPES: tuple[type, ...] = kinds.FACTORIZED_TYPES
LOW_RANK_TYPES: tuple[type, ...] = kinds.LOW_RANK_TYPES
DENSE_TYPES: tuple[type, ...] = kinds.DENSE_TYPES
_FACTORIZE_KINDS = kinds.FACTORIZE_CHECKS
_FACTORIZABLE = "factorizable layers (Linear, Conv1d/2d, MultiheadAttention, GPT-2 Conv1D)"
_WEIGHT_KINDS = kinds.WEIGHT_CHECKS


def _set_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    """Put ``new`` at ``fqn`` inside ``model`` (not the root: see :func:`_swap_all`), then keep
    PyTorch's fused encoder fast path off wherever a stock encoder now holds a lorita layer
    (:mod:`lorita.layers.fastpath`)."""
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    sync_fast_paths(model, fqn)


def _swap_all(model: nn.Module, replacements: Mapping[str, nn.Module]) -> nn.Module:
    """Swap every replacement in; returns the model — the replacement itself when the root
    (fqn ``""``, e.g. a bare ``nn.Linear``) is replaced, since a module cannot change its class."""
    if "" in replacements:
        return replacements[""]
    for fqn, new in replacements.items():
        _set_module(model, fqn, new)
    return model


def _work_copy(model: nn.Module, inplace: bool) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return model if inplace else copy.deepcopy(model)


def factorize_plan(
    model: nn.Module,
    target_modules: Targets = None,
    exclude_modules: Targets = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> TargetPlan:
    """Which layers :func:`factorize` would replace, and which it would skip and why."""
    return _factorize_plan(model, target_modules, exclude_modules, filter_fn)


def _factorize_plan(
    model: nn.Module,
    target_modules: Targets,
    exclude_modules: Targets,
    filter_fn: Callable[[nn.Module, str], bool] | None,
    warn_unmatched: bool = True,
) -> TargetPlan:
    return _drop_inner_skips(find_targets(
        model, _FACTORIZE_KINDS, target_modules, exclude_modules, filter_fn, what=_FACTORIZABLE,
        warn_unmatched=warn_unmatched,
    ))


def _drop_inner_skips(plan: TargetPlan) -> TargetPlan:
    """Forget skip reasons of modules inside a target (e.g. ``attn.out_proj`` when ``attn`` is one)."""
    names = plan.names
    plan.skipped = {
        fqn: why for fqn, why in plan.skipped.items() if not is_inside(fqn, names)
    }
    return plan


def factorize(
    model: nn.Module,
    depth: int = 3,
    target_modules: Targets = None,
    exclude_modules: Targets = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    init: Init = "default",
    forward_mode: ForwardMode = "auto",
    inplace: bool = False,
    init_scale: float = 1.0,
    factor_side: FactorSide = "input",
) -> nn.Module:
    """Replace each targeted ``nn.Linear`` / ``nn.Conv2d`` by its depth-N training form.

    Linear → :class:`FactorizedLinear` (N−1 square ``in×in`` bias-free factors, then ``in→out``
    with the bias); Conv2d (groups=1) → :class:`FactorizedConv2d` (the k×k conv, then N−1 square
    1×1 factors, bias on the last). LoRITa, arXiv 2405.03089, §2 / official ``arch/*.py``.

    Args:
        model: any ``nn.Module``.
        depth: N, the number of factors per layer (>= 1). ``depth=1`` returns the model
            unchanged (a copy unless ``inplace``).
        target_modules, exclude_modules, filter_fn: which layers (see :mod:`lorita.targeting`).
        init: ``"default"`` — each factor gets PyTorch's default init (the paper's); the
            product then starts far smaller than a dense init and depth ≥ 3 learns slowly.
            ``"preserve"`` — identity square factors, the weight in the other one: the model
            computes exactly what it did. ``"balanced"`` — each layer's own weight ``W = UΣVᵀ``
            (a fresh default init for a new model, the trained weight for a pretrained one)
            spread evenly, ``Σ^{1/N}`` in each factor: the same product, and the factors are
            balanced (``F_{j+1}ᵀF_{j+1} = F_j F_jᵀ``), so weight decay equals the Schatten-2/N
            penalty from step 0 (paper §3; :func:`lorita.linalg.balanced_factors`).
        forward_mode: ``"auto"`` (cheaper of chain/merged by MACs), ``"chain"`` or ``"merged"``.
        inplace: modify ``model`` itself instead of a deep copy.
        init_scale: > 0; every factor is multiplied by ``init_scale^{1/N}``, so each layer's
            product is ``init_scale·W`` ("preserve"/"balanced") or ``init_scale`` × the random
            product ("default"). Biases are not scaled.
        factor_side: Linear layers (and attention projections): ``"input"`` — N−1 square
            ``in×in`` factors then ``in→out`` (the paper); ``"output"`` — ``in→out`` then N−1
            square ``out×out``; ``"auto"`` — the smaller square size per layer (e.g. an MNIST
            head 512→10 gets 10×10 factors instead of 512×512). Same Schatten-2/N penalty at
            the optimum. Convs always keep the paper form (k×k conv then 1×1 ``C_out`` factors,
            which is the output side of the matricized kernel; see :class:`FactorizedConv2d`).

    Returns:
        The factorized model. Layers that match but cannot be handled are left untouched and
        logged (``logging.WARNING``) with the reason; :func:`factorize_plan` returns them. A bare
        layer (``factorize(nn.Linear(64, 64))``) is itself the target: its factorized form is
        returned (a new object, even with ``inplace=True``).

    Raises:
        ValueError: ``depth < 1``, bad ``init``/``forward_mode``, invalid regex, or no layer matched.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"`depth` must be an int >= 1, got {depth!r}; depth=1 leaves layers unchanged")
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}, got {init!r}")
    if factor_side not in linalg.FACTOR_SIDES:
        raise ValueError(f"`factor_side` must be one of {linalg.FACTOR_SIDES}, got {factor_side!r}")
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not init_scale > 0:
        raise ValueError(f"`init_scale` must be a number > 0, got {init_scale!r}")
    if forward_mode not in ("auto", "chain", "merged"):
        raise ValueError(f"`forward_mode` must be 'auto', 'chain' or 'merged', got {forward_mode!r}")
    plan = factorize_plan(model, target_modules, exclude_modules, filter_fn)
    for fqn, reason in plan.skipped.items():
        logger.warning("factorize: skipping `%s`: %s", fqn, reason)
    work = _work_copy(model, inplace)
    if depth == 1:
        return work
    plan = _factorize_plan(work, target_modules, exclude_modules, filter_fn, warn_unmatched=False)  # warned above
    new: dict[str, nn.Module] = {}
    for fqn, mod in plan.targets:
        cls = kinds.factorized_class(mod)
        try:
            new[fqn] = cls.from_dense(
                mod, depth, init=init, forward_mode=forward_mode, init_scale=init_scale, factor_side=factor_side
            )
            for pname, p in new[fqn].named_parameters():  # copied weights/biases must be finite
                linalg.ensure_finite(p.detach(), pname)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"`{fqn}`: {exc}") from None
    work = _swap_all(work, new)
    logger.info("factorize: %d layers at depth %d", len(new), depth)
    return work


def merge(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Multiply every lorita layer's factors back into one dense layer (paper §2.7).

    :class:`FactorizedLinear`/:class:`LowRankLinear` → ``nn.Linear``,
    :class:`FactorizedConv2d`/:class:`LowRankConv2d` → ``nn.Conv2d``. The result has the original
    module tree and ``state_dict`` keys, so its ``state_dict()`` loads with ``strict=True`` into a
    freshly built original model. Exact up to float rounding (the product is accumulated in
    float64). A model without lorita layers is returned unchanged (a copy unless ``inplace``).

    Raises:
        ValueError: a merged weight holds NaN/Inf (the message names the layer).
    """
    work = _work_copy(model, inplace)
    new: dict[str, nn.Module] = {}
    for fqn, mod in work.named_modules():
        if is_inside(fqn, new):
            continue  # inside a layer merged as a whole (the projections of an attention module)
        if isinstance(mod, FACTORIZED_TYPES + LOW_RANK_TYPES):
            try:
                new[fqn] = mod.to_dense()
            except ValueError as exc:
                raise ValueError(f"`{fqn}`: {exc}") from None
    if not new:
        logger.info("merge: no factorized or low-rank layers; nothing to merge")
    return _swap_all(work, new)


def effective_weight(module: nn.Module) -> Tensor:
    """The dense weight a layer applies: ``(out, in)`` or ``(C_out, C_in, k_h, k_w)``, detached.

    Works for ``nn.Linear``, ``nn.Conv1d/2d``, GPT-2 ``Conv1D`` (returned transposed, ``(out, in)``),
    the projections of an ``nn.MultiheadAttention`` (:class:`~lorita.layers.attention.ProjectionView`)
    and lorita's factorized and low-rank layers.

    Raises:
        TypeError: for other modules.
    """
    special = kinds.effective_matrix_weight(module)
    if special is not None:
        return special
    with torch.no_grad():
        if isinstance(module, FACTORIZED_TYPES):
            return module.merged_weight().detach()
        if isinstance(module, LOW_RANK_TYPES):
            return module.to_dense().weight.detach()
        if isinstance(module, DENSE_TYPES):
            return module.weight.detach()
    raise TypeError(f"{type(module).__name__} has no LoRITa weight")


def weight_layers(
    model: nn.Module,
    target_modules: Targets = None,
    exclude_modules: Targets = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> list[tuple[str, nn.Module]]:
    """Weight layers that rank selection and truncation act on, as ``[(fqn, layer)]``.

    Linear/Conv1d/Conv2d/GPT-2 Conv1D and their factorized and low-rank forms. An attention module
    ``attn`` (dense or factorized) gives two entries, ``attn.in_proj`` and ``attn.out_proj``
    (:class:`~lorita.layers.attention.ProjectionView` objects for a dense ``nn.MultiheadAttention``).
    """
    plan = _drop_inner_skips(find_targets(
        model, _WEIGHT_KINDS, target_modules, exclude_modules, filter_fn, what="weight layers"
    ))
    for fqn, reason in plan.skipped.items():
        logger.warning("skipping `%s`: %s", fqn, reason)
    # The two thin halves inside a low-rank layer are part of that layer, not layers of their own
    # (counting them too would double the weights and spectra). An attention module gives its two
    # projections.
    outer = [f for f, m in plan.targets if isinstance(m, LOW_RANK_TYPES)]
    out: dict[str, object] = {}
    for fqn, mod in plan.targets:
        if is_inside(fqn, outer):
            continue
        if isinstance(mod, nn.MultiheadAttention):
            for proj in PROJECTIONS:
                out[child_name(fqn, proj)] = ProjectionView(mod, proj)
        elif isinstance(mod, FactorizedMultiheadAttention):
            for proj in PROJECTIONS:
                out[child_name(fqn, proj)] = getattr(mod, proj)
        else:
            out.setdefault(fqn, mod)
    return list(out.items())


def singular_values(
    model: nn.Module,
    target_modules: Targets = None,
    exclude_modules: Targets = None,
) -> dict[str, Tensor]:
    """Singular values of each layer's effective weight.

    Conv weights are matricized as ``(C_out, C_in·k_h·k_w)``; factorized layers are merged first.

    Returns:
        ``{fqn: S}`` with ``S`` a float32/float64 CPU tensor of length ``min(out, in·k·k)``,
        descending.

    Raises:
        ValueError: no layer matched, or a weight holds NaN/Inf (named).
    """
    out: dict[str, Tensor] = {}
    for fqn, mod in weight_layers(model, target_modules, exclude_modules):
        w = effective_weight(mod)
        try:
            linalg.ensure_finite(w, "weight")
        except ValueError as exc:
            raise ValueError(f"`{fqn}`: {exc}") from None
        w = w.to(linalg._compute_dtype(w))
        out[fqn] = torch.linalg.svdvals(linalg.matricize(w)).cpu()
    return out


def truncate(model: nn.Module, ranks: Mapping[str, int], inplace: bool = False) -> nn.Module:
    """Keep the top-``rank`` singular triplets of each listed layer; same architecture.

    This is the paper's compressed model (§2.8): ``W ← U_r diag(S_r) Vh_r`` (Eckart–Young optimal,
    squared error ``Σ_{i>r} S_i²``), the layer type and ``state_dict`` keys unchanged.

    Args:
        model: a merged (dense) model.
        ranks: ``{fqn: rank}`` with ``1 <= rank <= min(out, in·k·k)``.
        inplace: modify ``model`` itself instead of a deep copy.

    The model may itself be the layer (key ``""``, e.g. ``truncate(nn.Linear(64, 64), {"": 4})``).

    Raises:
        ValueError / TypeError: unknown layer, still-factorized layer, rank out of range,
            non-finite weight, a layer whose weight is tied to another module's (e.g. an LM head
            sharing its embedding: truncating it would change the embedding too) or a module
            registered under two names — all before anything is modified; the message names
            both modules.
    """
    check_ranks(model, ranks)
    work = _work_copy(model, inplace)
    layers = check_ranks(work, ranks)
    new_weights: dict[str, Tensor] = {}
    for fqn, mod in layers.items():
        new_weights[fqn] = linalg.truncate_weight(mod.weight.detach(), ranks[fqn], name=fqn)
    with torch.no_grad():
        for fqn, w in new_weights.items():
            layers[fqn].weight.copy_(w)
    return work


def to_low_rank(
    model: nn.Module,
    ranks: Mapping[str, int],
    inplace: bool = False,
    split: str = "macs",
    example_inputs: Any = None,
    runtime: str = "eager",
    threads: int = 1,
    multiple: int | None = None,
    timer: Any = None,
    report: bool = False,
) -> nn.Module | tuple[nn.Module, dict]:
    """The deployable form: split each listed layer into two thin layers where that pays.

    Linear → :class:`LowRankLinear` (``Linear(in, r, bias=False)`` then ``Linear(r, out)``);
    Conv2d → :class:`LowRankConv2d` (k×k conv with ``r`` filters, then 1×1 conv). Which layers are
    split (:mod:`lorita.split`):

    * ``split="macs"`` (default): where ``r·(m + n) < m·n`` (paper §2.9);
    * ``split="latency"``: of those, only where the pair *measures* faster than the dense layer,
      each timed alone on the input it gets inside the model on ``example_inputs`` (needed), with
      ``runtime`` (``"eager"`` / ``"onnxruntime"``) and ``threads``; a channels_last input times
      channels_last layers (then deploy the model with ``.to(memory_format=torch.channels_last)``).
      ``multiple=k`` also times the rank rounded up to a multiple of ``k`` and uses it where it is
      faster still (never past the rank where the split stops saving MACs). ``timer`` is the
      injectable ``timer(fn, module, inputs) -> seconds`` of :mod:`lorita.timing`.

    Elsewhere a layer stays dense with its rank-``r`` truncated weight, so the result computes
    what ``truncate(model, ranks)`` computes (float rounding) — except where a rank was rounded up:
    that layer keeps *more* singular directions, so its error is at most ``truncate``'s.

    The model may itself be the layer: ``to_low_rank(nn.Linear(64, 64), {"": 4})`` returns a
    :class:`LowRankLinear` (``""`` is the root's name in ``named_modules()``, the key
    :func:`lorita.select_ranks` gives it). A new object is returned then even with
    ``inplace=True`` — a module cannot change its class — so always use the return value.

    Returns:
        The model; with ``report=True``, ``(model, {fqn: SplitDecision})`` — per layer split or
        dense, requested and used rank, MAC ratio, measured latency ratio and the reason.

    Raises:
        ValueError / TypeError: as :func:`truncate`; unknown ``split`` / ``runtime``, onnxruntime
            missing, ``example_inputs`` missing or rejected by the model (shapes named), bad
            ``multiple`` — all before anything is modified.
    """
    from lorita.split import decide_splits  # split -> timing; neither imports surgery

    check_ranks(model, ranks)
    work = _work_copy(model, inplace)
    layers = check_ranks(work, ranks)
    for fqn, mod in layers.items():  # a bad rank: the usual message, before any timing
        linalg._check_rank(ranks[fqn], mod.weight.shape, fqn)
    decisions = decide_splits(work, layers, ranks, split, example_inputs, runtime, threads, multiple, timer)
    new_layers: dict[str, nn.Module] = {}
    new_weights: dict[str, Tensor] = {}
    for fqn, mod in layers.items():
        d = decisions[fqn]
        if d.split:
            new_layers[fqn] = kinds.low_rank_class(mod).from_dense(mod, d.used_rank, name=fqn)
        else:
            new_weights[fqn] = linalg.truncate_weight(mod.weight.detach(), ranks[fqn], name=fqn)
            logger.info("to_low_rank: `%s` stays dense at rank %s (%s)", fqn, ranks[fqn], d.reason)
    with torch.no_grad():
        for fqn, w in new_weights.items():
            layers[fqn].weight.copy_(w)
    out = _swap_all(work, new_layers)
    return (out, decisions) if report else out

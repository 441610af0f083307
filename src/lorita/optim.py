"""Optimizer parameter groups for LoRITa training.

The paper applies the optimizer's ``weight_decay`` uniformly to every parameter, BatchNorm and
biases included (arXiv 2405.03089; official ``train_CNN.py``). That is ``decay="all"``, the
default. Weight decay on the factors is what induces low rank (paper §3: at the optimum,
``λ Σ_i ||F_i||_F² = λ·N·Σ_j σ_j(W)^{2/N}``); decay on BatchNorm γ/β and biases only adds the usual
ridge shrinkage. ``decay="weights"`` (the nanoGPT/timm habit) decays every parameter with two or
more dims (all weight matrices and kernels, factors included) and leaves biases and norms alone;
``decay="factors"`` decays only the factors of lorita's factorized layers, so the penalty is
exactly the Schatten-2/N term and nothing else.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from lorita.layers import FactorizedLayer

__all__ = ["param_groups", "Decay", "DECAY_CHOICES"]

Decay = Literal["all", "weights", "factors"]
DECAY_CHOICES: tuple[str, ...] = ("all", "weights", "factors")


def param_groups(model: nn.Module, weight_decay: float, decay: Decay = "all") -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a decayed and a non-decayed group.

    Args:
        model: factorized (or any) model.
        weight_decay: L2 coefficient λ (>= 0) for the decayed group.
        decay: ``"all"`` (paper), ``"weights"`` (params with ``dim >= 2``) or ``"factors"``
            (factor tensors of factorized layers only).

    Returns:
        A list of param-group dicts for any ``torch.optim`` optimizer; empty groups omitted.

    Raises:
        ValueError: negative ``weight_decay`` or unknown ``decay``.
    """
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}")
    if decay not in DECAY_CHOICES:
        raise ValueError(f"`decay` must be 'all', 'weights' or 'factors', got {decay!r}")
    factor_ids = set()
    for mod in model.modules():
        if isinstance(mod, FactorizedLayer):
            factor_ids.update(id(p) for p in mod.factor_parameters())
    yes, no, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if decay == "all" or (decay == "weights" and p.dim() >= 2) or (decay == "factors" and id(p) in factor_ids):
            yes.append(p)
        else:
            no.append(p)
    groups = []
    if yes:
        groups.append({"params": yes, "weight_decay": float(weight_decay)})
    if no:
        groups.append({"params": no, "weight_decay": 0.0})
    return groups

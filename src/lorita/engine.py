"""Training engine: one epoch of training, evaluation, optimizers and schedules.

Plain PyTorch loops that work on any model (factorized or not) and any iterable of ``(x, y)``
batches. They return dicts of metrics; progress bars come from tqdm and can be turned off.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["train_one_epoch", "evaluate", "make_optimizer", "make_scheduler", "predict_logits"]

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULERS = ("cosine", "constant", "step")


def make_optimizer(
    name: str, params: Iterable[Any], lr: float, momentum: float = 0.9, nesterov: bool = False
) -> torch.optim.Optimizer:
    """``sgd`` (with momentum), ``adamw`` or ``adam`` over ``params`` (a param-group list from
    :func:`lorita.param_groups`, which carries each group's ``weight_decay``).

    Note: with ``adam`` the decay is the coupled L2 penalty (gradient += λ·w) — the form whose
    optimum the paper's Schatten-2/N identity describes; ``adamw`` decouples it.

    Raises:
        ValueError: unknown name or non-positive ``lr``.
    """
    if lr <= 0:
        raise ValueError(f"`lr` must be > 0, got {lr}")
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def make_scheduler(
    name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, start_step: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step LR schedule: ``cosine`` (to 0, with linear warm-up), ``constant`` (warm-up then
    flat) or ``step`` (×0.1 at 50% and 75% of the steps). ``start_step``: join the schedule
    there (its first step is step ``start_step`` of ``total_steps``), as a run that changes its
    model mid-schedule does (``TrainConfig.factorize_at``).

    Raises:
        ValueError: unknown name.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULERS}")
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        step += start_step
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        if name == "step":
            return 0.01 if step >= 0.75 * total_steps else 0.1 if step >= 0.5 * total_steps else 1.0
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _to(batch: tuple[Tensor, Tensor], device: torch.device | str) -> tuple[Tensor, Tensor]:
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device | str = "cpu",
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    progress: bool = True,
    desc: str = "train",
    amp_dtype: torch.dtype | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float = 0.0,
) -> dict[str, float]:
    """One pass over ``loader``; the scheduler (if any) steps every batch.

    Args:
        loss_fn: ``(logits, y) -> scalar``; default cross-entropy.
        amp_dtype: autocast dtype (e.g. ``torch.bfloat16``) on CUDA; None = full precision.
        grad_scaler: for float16 autocast.
        clip_grad_norm: if > 0, rescale the gradients of all parameters so their global L2 norm
            is at most this (:func:`torch.nn.utils.clip_grad_norm_`, after unscaling under a
            ``grad_scaler``) before every step; 0 = off. A depth-N product's gradient grows with
            the factor norms, so one large early step can send a factor chain to NaN; clipping
            bounds each step (the guard ``lorita train`` turns on for factorized models).

    Returns:
        ``{"loss": mean training loss, "acc": training accuracy in [0, 1], "n": samples}``, plus
        ``"clipped"`` (the fraction of steps whose gradient norm was above ``clip_grad_norm``,
        in [0, 1]) when clipping is on: a guard that binds on most steps slows training down.

    Raises:
        FloatingPointError: the loss became NaN/Inf (the message gives the step and the fix).
    """
    loss_fn = loss_fn or F.cross_entropy
    model.train()
    total, correct, loss_sum = 0, 0, 0.0
    norms: list[Tensor] = []  # pre-clip gradient norms, kept on device (no host sync per step)
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    device_type = torch.device(device).type
    if clip_grad_norm < 0:
        raise ValueError(f"`clip_grad_norm` must be >= 0 (0 = off), got {clip_grad_norm}")
    params = [p for p in model.parameters() if p.requires_grad] if clip_grad_norm > 0 else []
    for step, batch in enumerate(bar):
        x, y = _to(batch, device)
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
            loss = loss_fn(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at step {step} of {desc}; lower the learning rate or weight decay"
            )
        optimizer.zero_grad(set_to_none=True)
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            if params:
                grad_scaler.unscale_(optimizer)
                norms.append(torch.nn.utils.clip_grad_norm_(params, clip_grad_norm))
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            loss.backward()
            if params:
                norms.append(torch.nn.utils.clip_grad_norm_(params, clip_grad_norm))
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = y.shape[0]
        total += n
        loss_sum += float(loss.detach()) * n
        correct += int((logits.detach().argmax(-1) == y).sum())
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / total:.4f}", acc=f"{correct / total:.4f}")
    out = {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1), "n": float(total)}
    if params:
        out["clipped"] = float((torch.stack(norms) > clip_grad_norm).float().mean()) if norms else 0.0
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    device: torch.device | str = "cpu",
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` (eval mode) over ``loader``.

    Returns:
        ``{"loss": mean loss, "acc": accuracy in [0, 1], "n": samples}``.
    """
    loss_fn = loss_fn or F.cross_entropy
    was_training = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        x, y = _to(batch, device)
        logits = model(x)
        loss_sum += float(loss_fn(logits.float(), y)) * y.shape[0]
        correct += int((logits.argmax(-1) == y).sum())
        total += y.shape[0]
    model.train(was_training)
    return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1), "n": float(total)}


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], device: torch.device | str = "cpu"
) -> Tensor:
    """Concatenated logits of ``model`` (eval mode) over ``loader``, on CPU."""
    was_training = model.training
    model.eval()
    out = [model(x.to(device)).float().cpu() for x, _ in loader]
    model.train(was_training)
    return torch.cat(out)

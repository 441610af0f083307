"""Fine-tuning of a compressed (truncated or low-rank) model, optionally distilled from a teacher.

The model is trained **as it is**: a low-rank layer's two thin factors (``first``, ``second``),
its bias and every other parameter (BatchNorm, dense layers) are updated in place, so the result
keeps its ranks and its weights are the ones the caller saves. This fixes the official LoRITa
code, which fine-tunes a re-densified copy and then drops the fine-tuned weights (paper-notes
§4.5, §11). Nothing here looks at a test split: the caller chooses the data.

Distillation (Hinton, Vinyals, Dean 2015): LoRITa (arXiv 2405.03089) names it the natural
companion of low-rank compression — the merged dense model is a free teacher for its own
truncated, low-rank student. The loss is

    L = (1 − w) · CE(student, y) + w · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

with temperature ``T`` and weight ``w``; the ``T²`` factor keeps the soft-target gradients on the
same scale as the hard-label ones (Hinton et al., §2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from lorita.engine import OPTIMIZERS, make_optimizer

__all__ = ["DistillConfig", "FinetuneConfig", "distillation_loss", "finetune"]

_WHEN = ("recover", "every")




@dataclass(frozen=True)
class DistillConfig:
    """Distillation settings.

    Attributes:
        temperature: softmax temperature ``T`` (> 0) for both teacher and student.
        weight: share ``w`` in [0, 1] of the soft-target term; ``1 − w`` goes to cross-entropy
            on the labels. ``weight=0`` is plain fine-tuning.
    """

    temperature: float = 4.0
    weight: float = 0.5

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"`temperature` must be a number > 0, got {t!r}")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0.0 <= w <= 1.0:
            raise ValueError(f"`weight` must be in [0, 1], got {w!r}")


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = 4.0,
    weight: float = 0.5,
) -> Tensor:
    """Hinton distillation loss, averaged over the batch.

    Args:
        student_logits: ``(B, C)`` raw scores of the model being trained.
        teacher_logits: ``(B, C)`` raw scores of the teacher (detached here; no gradient flows
            into the teacher).
        targets: ``(B,)`` int64 class labels.
        temperature: ``T`` > 0.
        weight: ``w`` in [0, 1], the share of the soft-target term.

    Returns:
        Scalar ``(1 − w)·CE(student, y) + w·T²·KL(p_T ‖ q_T)`` where ``p_T = softmax(teacher/T)``,
        ``q_T = softmax(student/T)`` and KL is summed over classes, averaged over the batch.

    Raises:
        ValueError: shapes that differ, or ``temperature``/``weight`` out of range.
    """
    DistillConfig(temperature, weight)  # validates
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; the teacher must predict the same classes"
        )
    hard = F.cross_entropy(student_logits, targets)
    if weight == 0:
        return hard
    t = float(temperature)
    log_q = F.log_softmax(student_logits / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    soft = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)
    return (1.0 - weight) * hard + weight * soft


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune a compressed model (its own optimizer settings, separate from training).

    Attributes:
        epochs: passes over the fine-tuning data per fine-tuning call (>= 1).
        max_batches: stop each call after this many batches (None: whole epochs).
        optimizer: ``"adam"`` | ``"adamw"`` | ``"sgd"``.
        lr: learning rate (constant during a call).
        momentum: SGD momentum.
        weight_decay: L2 coefficient on every parameter (0 keeps the search's spectra intact).
        distill: :class:`DistillConfig` to distill from a teacher (the dense
            merged model in :func:`lorita.search`), or None for plain cross-entropy.
        when: for :func:`lorita.search` — ``"recover"`` (the paper's ``iter_training``: fine-tune
            only when no rank reduction stays within tolerance, then accept it if fine-tuning
            brings it back) or ``"every"`` (after every accepted reduction as well).
    """

    epochs: int = 1
    max_batches: int | None = None
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    distill: DistillConfig | None = None
    when: str = "recover"

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"`epochs` must be an int >= 1, got {self.epochs!r}")
        if self.max_batches is not None and (not isinstance(self.max_batches, int) or self.max_batches < 1):
            raise ValueError(f"`max_batches` must be None or an int >= 1, got {self.max_batches!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not isinstance(self.lr, int | float) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {self.weight_decay!r}")
        if self.distill is not None and not isinstance(self.distill, DistillConfig):
            raise TypeError(f"`distill` must be a DistillConfig or None, got {type(self.distill).__name__}")
        if self.when not in _WHEN:
            raise ValueError(f"`when` must be one of {_WHEN}, got {self.when!r}")


def _batches(data: Iterable, epoch: int) -> Iterable:
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)
    return data


def finetune(
    model: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    config: FinetuneConfig | None = None,
    teacher: nn.Module | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """Fine-tune ``model`` **in place** on ``data`` (e.g. the training split, never the test one).

    Args:
        model: any model — typically the output of :func:`lorita.to_low_rank` or
            :func:`lorita.search`; its ranks and structure are kept.
        data: iterable of ``(x, y)`` batches; if it has ``set_epoch`` (as
            :class:`lorita.data.TensorLoader`), it is called with ``seed + epoch`` so shuffling is
            reproducible and differs between calls with different seeds.
        config: optimizer settings and optional distillation (default :class:`FinetuneConfig`).
        teacher: a model with the same output classes (e.g. the dense merged model); required
            when ``config.distill`` is set; used in eval mode without gradients.
        seed: seeds the data order and any randomness in the model (dropout) inside a forked RNG,
            so the caller's global RNG state is left untouched.
        device: where ``model`` (and ``teacher``) live.
        progress: show a tqdm bar.

    Returns:
        ``{"loss": mean training loss of the last epoch, "batches": batches run}``.

    Raises:
        ValueError: ``config.distill`` without a teacher, empty data, or a non-finite loss.
    """
    cfg = config or FinetuneConfig()
    if cfg.distill is not None and teacher is None:
        raise ValueError("FinetuneConfig.distill is set but no `teacher` was given; pass the dense model")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=False everywhere)")
    opt = make_optimizer(
        cfg.optimizer, [{"params": params, "weight_decay": cfg.weight_decay}], cfg.lr, cfg.momentum
    )
    if teacher is not None:
        teacher_was_training = teacher.training
        teacher.eval()
    was_training = model.training
    model.train()
    done, loss_sum, n_seen = 0, 0.0, 0
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for epoch in range(cfg.epochs):
                loss_sum, n_seen = 0.0, 0
                bar = tqdm(
                    _batches(data, seed + epoch),
                    desc=f"fine-tune {epoch + 1}/{cfg.epochs}",
                    disable=not progress,
                    leave=False,
                )
                for i, (x, y) in enumerate(bar):
                    if cfg.max_batches is not None and i >= cfg.max_batches:
                        break
                    x, y = x.to(device), y.to(device)
                    logits = model(x)
                    if cfg.distill is not None:
                        with torch.no_grad():
                            t_logits = teacher(x)
                        loss = distillation_loss(
                            logits, t_logits, y, cfg.distill.temperature, cfg.distill.weight
                        )
                    else:
                        loss = F.cross_entropy(logits, y)
                    if not torch.isfinite(loss):
                        raise ValueError(
                            f"fine-tuning loss is {float(loss)} at batch {i}; lower FinetuneConfig.lr"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    done += 1
                    loss_sum += float(loss.detach()) * y.shape[0]
                    n_seen += y.shape[0]
    finally:
        model.train(was_training)
        if teacher is not None:
            teacher.train(teacher_was_training)
    if done == 0:
        raise ValueError("fine-tuning data yielded no batches; pass the training loader")
    return {"loss": loss_sum / max(n_seen, 1), "batches": float(done)}

"""Knowledge distillation loss (Hinton, Vinyals, Dean 2015) for fine-tuning a compressed model.

LoRITa (arXiv 2405.03089) names distillation as the natural companion of low-rank compression:
the merged dense model is a free teacher for its own truncated, low-rank student. The loss is

    L = (1 − w) · CE(student, y) + w · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

with temperature ``T`` and weight ``w``; the ``T²`` factor keeps the soft-target gradients on the
same scale as the hard-label ones (Hinton et al., §2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

__all__ = ["DistillConfig", "distillation_loss"]


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

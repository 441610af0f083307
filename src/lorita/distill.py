"""Deprecated: moved to :mod:`lorita.finetune` (``DistillConfig``, ``distillation_loss``)."""

import warnings

from lorita.finetune import DistillConfig, distillation_loss

__all__ = ["DistillConfig", "distillation_loss"]
warnings.warn("lorita.distill moved to lorita.finetune", DeprecationWarning, stacklevel=2)

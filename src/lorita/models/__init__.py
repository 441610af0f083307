"""Small plain reference models for the CLI and benchmarks (no LoRITa baked in: use
:func:`lorita.factorize`): ``fcn`` (:mod:`lorita.models.fcn`), ``resnet20`` / ``resnet18``
(:mod:`lorita.models.resnet`), ``vgg16`` (:mod:`lorita.models.vgg`), ``vit`` (:mod:`lorita.models.vit`).
"""

from __future__ import annotations

from lorita.models.fcn import FCN
from lorita.models.registry import DEFAULT_CFGS, MODELS, build_model, default_targets

__all__ = ["FCN", "MODELS", "DEFAULT_CFGS", "build_model", "default_targets"]

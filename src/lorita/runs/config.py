"""Run configuration: one dataclass per training run, validated, JSON round-trip.

The CLI turns flags into a :class:`TrainConfig`, writes it as ``config.json`` next to the
checkpoint, and ``lorita compress`` rebuilds the model from it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorita.engine import OPTIMIZERS, SCHEDULERS
from lorita.layers.base import FACTOR_SIDES, INITS

__all__ = ["TrainConfig", "LEGACY_DEFAULTS", "model_recipe"]

#: Values of keys added after the first config.json format, for files written without them: the
#: behaviour those runs had, so an old run resumes (and rebuilds) exactly as it trained.
LEGACY_DEFAULTS: dict[str, Any] = {"init_scale": 1.0, "factor_side": "input", "clip_grad_norm": 0.0, "init_from": None,
                                   "factorize_at": 0}


def model_recipe(model: str, dataset: str | None = None) -> dict[str, Any]:
    """The training defaults of a reference model: its ``DEFAULT_CFG``'s ``dataset`` and ``recipe``
    (``lorita.models``, timm's ``_cfg`` habit), as :class:`TrainConfig` field values, except
    ``factorize_at_fraction`` (the share of ``epochs`` trained plain first; resolved by
    :meth:`TrainConfig.for_model`). ``{}`` for a model without a config, or when ``dataset`` is
    given and is not the model's own (a recipe is measured on that dataset only)."""
    from lorita.models import DEFAULT_CFGS

    cfg = DEFAULT_CFGS.get(model, {})
    if dataset is not None and dataset != cfg.get("dataset", dataset):
        return {}
    return {**({"dataset": cfg["dataset"]} if "dataset" in cfg else {}), **cfg.get("recipe", {})}


@dataclass
class TrainConfig:
    """Everything needed to reproduce a LoRITa training run (arXiv 2405.03089 recipe knobs).

    Attributes:
        model: reference model name (``lorita.models.MODELS``). model_kwargs: its overrides.
        dataset: ``"mnist"`` ... data_dir: folder with the data files (None: ``data/<dataset>``).
        val_size: validation images carved from the training set. split_seed: seed of that split.
        verify: check dataset checksums. limit_train: use only the first N training images.
        depth: N factors per targeted layer (1 = plain training).
        target_modules / exclude_modules: which layers to factorize (None: the model's default).
        init: factor start, ``"balanced"`` | ``"default"`` (paper) | ``"preserve"``
            (:func:`lorita.factorize`). init_scale: the start's product is ``init_scale·W``.
        factor_side: ``"auto"`` | ``"input"`` (paper) | ``"output"``: where Linear layers keep
            their square factors. clip_grad_norm: global gradient-norm bound for factorized
            models (depth > 1), 0 = off. See the README "Training" section for the measurements
            behind these defaults; config files without the last three keys load with
            :data:`LEGACY_DEFAULTS` (the behaviour before they existed).
        init_from: start from these dense weights (a run folder or a safetensors file), spread
            over the factors by ``init`` (the pretrained path); None = a fresh model.
        factorize_at: "factorize late": train the plain model (depth 1) for the first
            ``factorize_at`` epochs (into ``<out>/plain``), then spread it over the ``depth``
            factors with ``init`` (exact at the switch) and train the remaining
            ``epochs − factorize_at`` epochs under LoRITa; one learning-rate schedule spans all
            ``epochs`` (the model changes mid-schedule).
            0 = factorized from the start (the paper).
        optimizer: ``sgd`` | ``adamw`` | ``adam``. lr, momentum: as usual.
        weight_decay: L2 coefficient λ; decay: ``"all"`` (paper) | ``"weights"`` | ``"factors"``.
        epochs, batch_size: as usual. scheduler: ``cosine`` | ``constant`` | ``step``;
        warmup_epochs: linear warm-up length. label_smoothing: CE smoothing.
        augment: training augmentation (datasets that define one). seed: init and shuffling.
        device: ``"cpu"`` | ``"cuda"`` | ``"cuda:1"``... amp: bf16 autocast on CUDA.
    """

    model: str = "fcn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist"
    data_dir: str | None = None
    val_size: int = 5000
    split_seed: int = 0
    verify: bool = True
    limit_train: int | None = None
    depth: int = 3
    target_modules: Any = None
    exclude_modules: Any = None
    init: str = "balanced"
    init_scale: float = 1.0
    factor_side: str = "auto"
    clip_grad_norm: float = 2.0
    init_from: str | None = None
    factorize_at: int = 0
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    decay: str = "all"
    epochs: int = 10
    batch_size: int = 128
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = False
    seed: int = 0
    device: str = "cpu"
    amp: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"`{name}` {why}, got {getattr(self, name)!r}")

        if not isinstance(self.depth, int) or self.depth < 1:
            bad("depth", "must be an int >= 1")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            bad("epochs", "must be an int >= 1")
        if self.batch_size < 1:
            bad("batch_size", "must be >= 1")
        if self.lr <= 0:
            bad("lr", "must be > 0")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"must be one of {OPTIMIZERS}")
        if self.scheduler not in SCHEDULERS:
            bad("scheduler", f"must be one of {SCHEDULERS}")
        if self.decay not in ("all", "weights", "factors"):
            bad("decay", "must be 'all', 'weights' or 'factors'")
        if self.init not in INITS:
            bad("init", "must be one of " + ", ".join(repr(i) for i in INITS))
        scale = self.init_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            bad("init_scale", "must be a number > 0")
        if self.factor_side not in FACTOR_SIDES:
            bad("factor_side", "must be one of " + ", ".join(repr(s) for s in FACTOR_SIDES))
        if not isinstance(self.clip_grad_norm, (int, float)) or not self.clip_grad_norm >= 0:
            bad("clip_grad_norm", "must be >= 0 (0 = off)")
        k = self.factorize_at
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.epochs:
            bad("factorize_at", f"must be an int in 0..{self.epochs - 1} (epochs of plain training before "
                                "factorizing; 0 = from the start)")
        if k and self.depth == 1:
            bad("factorize_at", "needs `depth` > 1 (depth 1 is plain training throughout)")
        if k and self.init == "default":
            bad("factorize_at", "needs `init` 'balanced' or 'preserve' ('default' would discard the plain "
                                "epochs' weights)")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad("label_smoothing", "must be in [0, 1)")
        if self.val_size < 0:
            bad("val_size", "must be >= 0")
        if self.limit_train is not None and self.limit_train < 1:
            bad("limit_train", "must be >= 1 or None")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def for_model(cls, model: str, **fields: Any) -> TrainConfig:
        """A config with ``model``'s recipe (:func:`model_recipe`) under ``fields``: a given field
        wins, then the recipe, then the dataclass default. A recipe holds for its model's own
        dataset: with another ``dataset`` in ``fields`` none of it applies. The recipe's ``factorize_at_fraction``
        becomes ``factorize_at = round(fraction · epochs)`` (below ``epochs``) when the run can
        factorize late: ``depth > 1``, ``init`` not ``"default"``, no ``init_from`` and no
        ``factorize_at`` given; else 0.

        Raises:
            ValueError: a field value the dataclass rejects (named, as in ``TrainConfig(...)``).
        """
        recipe = model_recipe(model, fields.get("dataset"))
        frac = recipe.pop("factorize_at_fraction", 0.0)
        merged = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        merged.update(recipe)
        merged.update(fields, model=model)
        if "factorize_at" not in fields:
            depth, epochs = merged["depth"], merged["epochs"]
            late = (isinstance(depth, int) and depth > 1 and merged["init"] != "default" and not merged["init_from"]
                    and isinstance(epochs, int) and epochs >= 1)
            merged["factorize_at"] = min(round(frac * epochs), epochs - 1) if late else 0
        return cls(**merged)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys raise (they are usually typos); keys missing from an
        older file take :data:`LEGACY_DEFAULTS` (that run's behaviour), others the field defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(names)}")
        return cls(**{**LEGACY_DEFAULTS, **d})

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read ``config.json``.

        Raises:
            FileNotFoundError / ValueError: missing or invalid file (named).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config at {path}; is this a folder written by `lorita train`?")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None

    def resolved_data_dir(self) -> str:
        return self.data_dir if self.data_dir is not None else f"data/{self.dataset}"

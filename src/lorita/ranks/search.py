"""Greedy rank search: the smallest low-rank model within an accuracy tolerance (or a budget).

This is the paper's iterative mode (LoRITa, arXiv 2405.03089; official ``post_cnns.py -g
iter_training``, paper-notes §4.5), rebuilt without its bugs (§11):

* every choice is made on a **validation** criterion supplied by the caller (``evaluate``), never
  on the test split;
* at each step every targeted layer is tried one rank step lower; the reduction that hurts the
  validation loss least (optionally per MAC saved) *and* keeps validation accuracy
  ``>= reference − tolerance`` is committed; when no reduction fits, the step is halved (large
  steps first, down to 1 or the rank multiple);
* it stops when a params/MAC budget is met, or when nothing fits at the smallest step;
* optional fine-tuning (and distillation from the dense model) **carries the fine-tuned weights
  forward**: the low-rank model itself is trained, and later steps re-truncate each fine-tuned
  layer through an exact, cheap SVD of its current thin product ``B·A`` (QR of both factors,
  then an ``r×r`` SVD);
* the result is the deployable model (two thin layers where that saves MACs, the original
  dense layer elsewhere), its ranks and the full trace — nothing is lost.

Efficiency: each layer's SVD is computed once (and again only after a fine-tune); candidate
layers are built from the cached ``U, S, Vh`` and swapped into one working model, so a step
costs one evaluation per layer and no deep copies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lorita.engine import evaluate as _evaluate_loader
from lorita.finetune import FinetuneConfig
from lorita.linalg import svd_of_product
from lorita.ranks._greedy import _GreedyRun, points
from lorita.ranks.policies import (
    EnergyThreshold,
    FixedRank,
    GlobalThreshold,
    LayerBudget,
    MacBudget,
    ParamBudget,
    RankPolicy,
    RankRatio,
    policy_string,
)
from lorita.targeting import Targets

__all__ = ["GreedySearch", "SearchResult", "BatchEvaluator", "search", "svd_of_product", "parse_budget", "points"]

logger = logging.getLogger(__name__)

_CRITERIA = ("loss", "loss_per_cost")
_POLICY_TYPES = (FixedRank, RankRatio, EnergyThreshold, GlobalThreshold, ParamBudget, MacBudget, LayerBudget)
Evaluate = Callable[[nn.Module], Mapping[str, float]]


def parse_budget(text: str) -> ParamBudget | MacBudget:
    """``"params:0.1"`` → ``ParamBudget(0.1)``; ``"macs:0.2"`` → ``MacBudget(0.2)`` (for
    :class:`GreedySearch`, which counts MACs on its own ``example_inputs``).

    Raises:
        ValueError: another form, or a fraction outside (0, 1].
    """
    kind, _, raw = str(text).partition(":")
    kind = kind.strip().lower()
    if kind not in ("params", "macs") or not raw:
        raise ValueError(f"invalid budget {text!r}; expected params:F or macs:F with F in (0, 1], e.g. macs:0.2")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"invalid budget {text!r}: {raw!r} is not a number; e.g. macs:0.2") from None
    return ParamBudget(value) if kind == "params" else MacBudget(value, example_inputs=())


@dataclass(frozen=True)
class GreedySearch:
    """Settings of :func:`search` (the torchao/PEFT habit: one verb plus a config).

    Attributes:
        tolerance: allowed drop of validation accuracy, in **percentage points**: the search
            keeps ``val_acc >= reference_acc − tolerance / 100`` (1.0 = one point, the paper's).
        budget: :class:`~lorita.ranks.policies.ParamBudget` or :class:`~lorita.ranks.policies.MacBudget` — stop as
            soon as the targeted layers' deployable weight params / MACs are ``<= fraction`` of
            their dense ones (the same definition as the one-shot budget policies; a MacBudget's
            own ``example_inputs`` are ignored, :func:`search` counts on its own). None: go on
            until the tolerance binds.
        initial_step: first rank step (None: the largest power of two ``<= max_rank / 8`` over
            the targeted layers, e.g. 64 for a 512-wide layer; the paper used 32 for VGG16 and 8
            for ResNet20). Halved whenever no reduction fits.
        multiple: round every rank down to a multiple of this (e.g. 8 for fast kernels); steps
            below it are skipped.
        criterion: ``"loss"`` — commit the reduction with the lowest validation loss (the
            paper's rule); ``"loss_per_cost"`` — the lowest loss increase per MAC (or param, with
            a ParamBudget) saved, which favours big layers.
        keep_dense: a layer stays dense and untruncated until a rank is reached where two thin
            layers are cheaper (``r·(m+n) < m·n``); its first reduction jumps there. False: the
            paper's behaviour (dense truncated layers in between, saving nothing).
        finetune: :class:`~lorita.finetune.FinetuneConfig` to fine-tune between steps (needs
            ``finetune_data``), or None.
        seed: seeds fine-tuning (data order, dropout) reproducibly; the search itself has no
            other randomness and breaks ties by module order.
        max_commits: stop after this many committed reductions (None: no limit).
        start: a one-shot rank policy (e.g. ``EnergyThreshold(0.9999)``) whose ranks the search
            starts from instead of full rank — a warm start that skips the many cheap first
            steps on a LoRITa-trained model, whose trailing singular values are near zero. Ranks
            are rounded down to ``multiple``; with ``keep_dense`` a layer whose start rank saves
            nothing stays dense. The start must itself keep ``val_acc >= reference − tolerance``
            (the reference is still the unmodified model), else :func:`search` raises. None: start
            from full rank (the paper).
    """

    tolerance: float = 1.0
    budget: ParamBudget | MacBudget | None = None
    initial_step: int | None = None
    multiple: int = 1
    criterion: str = "loss"
    keep_dense: bool = True
    finetune: FinetuneConfig | None = None
    seed: int = 0
    max_commits: int | None = None
    start: RankPolicy | None = None

    def __post_init__(self) -> None:
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not math.isfinite(tol) or not 0 <= tol <= 100:
            raise ValueError(f"`tolerance` must be accuracy points in [0, 100] (1.0 = one point), got {tol!r}")
        if self.budget is not None and not isinstance(self.budget, ParamBudget | MacBudget):
            raise TypeError(
                f"`budget` must be ParamBudget, MacBudget or None, got {type(self.budget).__name__}; "
                f"e.g. ParamBudget(0.1)"
            )
        if getattr(self.budget, "layer_cap", None) is not None:
            raise ValueError(f"`budget` {self.budget!r}: the search's stop budget takes no `layer_cap`; give the "
                             "capped policy as `start` (e.g. start=MacBudget(0.5, x, layer_cap=0.5))")
        for name in ("initial_step", "max_commits"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"`{name}` must be None or an int >= 1, got {v!r}")
        if isinstance(self.multiple, bool) or not isinstance(self.multiple, int) or self.multiple < 1:
            raise ValueError(f"`multiple` must be an int >= 1, got {self.multiple!r}")
        if self.criterion not in _CRITERIA:
            raise ValueError(f"`criterion` must be one of {_CRITERIA}, got {self.criterion!r}")
        if self.start is not None and not isinstance(self.start, _POLICY_TYPES):
            raise TypeError(
                f"`start` must be a rank policy (e.g. EnergyThreshold(0.9999)) or None, got {type(self.start).__name__}"
            )
        if self.finetune is not None and not isinstance(self.finetune, FinetuneConfig):
            raise TypeError(f"`finetune` must be a FinetuneConfig or None, got {type(self.finetune).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (budget as ``"params:0.1"`` / ``"macs:0.2"``)."""
        b = self.budget
        budget = None if b is None else f"{'params' if isinstance(b, ParamBudget) else 'macs'}:{b.fraction:g}"
        ft = None
        if self.finetune is not None:
            ft = {
                k: getattr(self.finetune, k)
                for k in ("epochs", "max_batches", "optimizer", "lr", "momentum", "weight_decay", "when")
            }
            d = self.finetune.distill
            ft["distill"] = None if d is None else {"temperature": d.temperature, "weight": d.weight}
        return {
            "tolerance": self.tolerance,
            "budget": budget,
            "initial_step": self.initial_step,
            "multiple": self.multiple,
            "criterion": self.criterion,
            "keep_dense": self.keep_dense,
            "finetune": ft,
            "seed": self.seed,
            "max_commits": self.max_commits,
            "start": None if self.start is None else policy_string(self.start),
        }


@dataclass
class SearchResult:
    """What :func:`search` found.

    Attributes:
        model: the deployable model (``LowRankLinear``/``LowRankConv2d`` where a layer was split,
            the original dense layer elsewhere), fine-tuned if fine-tuning was on. Save it with
            :func:`lorita.save`.
        ranks: ``{fqn: rank}`` for every searched layer (``rank == min(m, n)`` means untouched).
        forms: ``{fqn: "dense" | "low_rank" | "truncated"}``.
        trace: one dict per event (``step``, ``event``, ``layer``, ``rank``, ``step_size``,
            ``macs``, ``params``, ``val_loss``, ``val_acc``, ``finetuned``, ``seconds``).
        reference: ``evaluate`` of the dense input model. final: ``evaluate`` of ``model``.
        macs / params: of ``model`` (MACs per sample; FLOPs = 2·MACs). dense_macs / dense_params:
            of the dense input. target_fraction: deployable cost of the searched layers over their
            dense cost (MACs, or params with a ParamBudget).
        budget_met: None without a budget. stop_reason: why the search ended.
        evaluations: calls of ``evaluate``. finetunes: fine-tuning calls (kept or rolled back).
        wall_seconds: total time.
    """

    model: nn.Module
    ranks: dict[str, int]
    forms: dict[str, str]
    trace: list[dict[str, Any]]
    reference: dict[str, float]
    final: dict[str, float]
    macs: int
    params: int
    dense_macs: int
    dense_params: int
    target_fraction: float
    budget_met: bool | None
    stop_reason: str
    evaluations: int = 0
    finetunes: int = 0
    wall_seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-serializable."""
        return {
            k: getattr(self, k)
            for k in (
                "ranks",
                "forms",
                "trace",
                "reference",
                "final",
                "macs",
                "params",
                "dense_macs",
                "dense_params",
                "target_fraction",
                "budget_met",
                "stop_reason",
                "evaluations",
                "finetunes",
                "wall_seconds",
                "config",
            )
        }


class BatchEvaluator:
    """A fixed validation set held in memory, as the ``evaluate`` callable of :func:`search`.

    Args:
        batches: iterable of ``(x, y)`` batches (e.g. the validation :class:`TensorLoader`); it
            is read once, transforms applied once.
        max_samples: keep only the first ``max_samples`` samples (a fixed subset, for speed).
        device: where the model runs.
        loss_fn: ``(logits, y) -> scalar`` (default cross-entropy).

    Calling it on a model returns ``{"loss": mean loss, "acc": accuracy in [0, 1], "n": samples}``
    (model in eval mode, no gradients).

    Raises:
        ValueError: no samples.
    """

    def __init__(
        self,
        batches: Iterable[tuple[Tensor, Tensor]],
        max_samples: int | None = None,
        device: torch.device | str = "cpu",
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"`max_samples` must be None or >= 1, got {max_samples}")
        kept: list[tuple[Tensor, Tensor]] = []
        n = 0
        for x, y in batches:
            if max_samples is not None and n + len(y) > max_samples:
                x, y = x[: max_samples - n], y[: max_samples - n]
            if len(y):
                kept.append((x.to(device), y.to(device)))
                n += len(y)
            if max_samples is not None and n >= max_samples:
                break
        if n == 0:
            raise ValueError("the validation batches are empty; pass the validation loader")
        self.batches, self.n, self.device, self.loss_fn = kept, n, device, loss_fn

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return _evaluate_loader(model, self.batches, self.device, self.loss_fn)


def search(
    model: nn.Module,
    evaluate: Evaluate,
    config: GreedySearch | None = None,
    *,
    example_inputs: Any,
    finetune_data: Iterable[tuple[Tensor, Tensor]] | None = None,
    teacher: nn.Module | None = None,
    target_modules: Targets = None,
    exclude_modules: Targets = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> SearchResult:
    """Greedy layer-by-layer rank reduction within a validation-accuracy tolerance.

    Paper: LoRITa ``iter_training`` (arXiv 2405.03089, official ``post_cnns.py``;
    paper-notes §4.5), selected on validation data instead of the test set, with fine-tuned
    weights carried forward and the result returned as a deployable model.

    Args:
        model: a trained model, dense or factorized (factorized layers are merged first). Never
            modified.
        evaluate: ``evaluate(model) -> {"loss": float, "acc": float}`` on a **validation** split
            (accuracy in [0, 1]); :class:`BatchEvaluator` builds one from a loader. Its loss ranks
            the candidate reductions, its accuracy enforces the tolerance.
        config: :class:`GreedySearch` (tolerance, budget, steps, rounding, fine-tuning).
        example_inputs: a batch the model accepts (any batch size), used once to count MACs per
            sample and each layer's output positions.
        finetune_data: ``(x, y)`` batches for fine-tuning (the training split); required when
            ``config.finetune`` is set.
        teacher: distillation teacher; default: a copy of the merged dense input model.
        target_modules, exclude_modules: which layers to search (regex or names, as everywhere in
            lorita); others stay as they are.
        device: where the model and batches live.
        progress: show a progress bar with the current MACs and validation accuracy.

    Returns:
        :class:`SearchResult` — ``final["acc"] >= reference["acc"] − tolerance/100`` always holds
        on ``evaluate``'s data; with a budget, ``budget_met`` says whether it was reached.

    Raises:
        ValueError / TypeError: bad config, no layer matched, fine-tuning without data, or an
            ``evaluate`` that does not return ``loss``/``acc``.
    """
    cfg = config or GreedySearch()
    if not isinstance(cfg, GreedySearch):
        raise TypeError(f"`config` must be a GreedySearch, got {type(cfg).__name__}")
    if not callable(evaluate):
        raise TypeError("`evaluate` must be callable: model -> {'loss', 'acc'}; use lorita.BatchEvaluator")
    if cfg.finetune is not None and finetune_data is None:
        raise ValueError("GreedySearch.finetune is set but `finetune_data` is None; pass the training loader")
    run = _GreedyRun(
        model, evaluate, cfg, example_inputs, finetune_data, teacher, target_modules, exclude_modules, device
    )
    return run.result(run.run(progress), SearchResult)

"""The greedy search's working state: one :class:`_GreedyRun` per :func:`lorita.ranks.search.search` call.

Each targeted layer is a :class:`_Layer` (shapes, cost weights, current rank, cached SVD); a step
tries every layer one rank step lower on one working model, commits the least harmful reduction
that keeps validation accuracy within the tolerance, optionally fine-tunes, and halves the step
when nothing fits (paper-notes §4.5; the algorithm is described in :mod:`lorita.ranks.search`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lorita import linalg
from lorita.counting import count_macs
from lorita.finetune import finetune
from lorita.layers import LowRankConv2d, LowRankLayer, LowRankLinear
from lorita.ranks.policies import ParamBudget, policy_string, select_ranks
from lorita.surgery import _set_module, merge, weight_layers
from lorita.targeting import Targets

if TYPE_CHECKING:
    from lorita.ranks.search import GreedySearch, SearchResult

logger = logging.getLogger(__name__)

Candidate = tuple["_Layer", int, "nn.Module | None", dict]


@dataclass
class _Layer:
    """Search state of one layer: shapes, cost weights, current rank and cached SVD."""

    name: str
    template: nn.Module  # the dense layer (hyper-parameters; its weight is not used)
    m: int
    n: int
    positions: int
    bias_params: int
    rank: int
    U: Tensor
    S: Tensor
    Vh: Tensor

    @property
    def max_rank(self) -> int:
        return min(self.m, self.n)

    def split(self, r: int) -> bool:
        return linalg.worth_splitting(self.m, self.n, r)

    def form(self, r: int) -> str:
        if r >= self.max_rank:
            return "dense"
        return "low_rank" if self.split(r) else "truncated"

    def weight_cost(self, r: int) -> int:
        return r * (self.m + self.n) if self.form(r) == "low_rank" else self.m * self.n

    def break_even(self) -> int:
        """Largest rank whose split is cheaper than the dense layer (0 if none)."""
        return max(0, math.ceil(self.m * self.n / (self.m + self.n)) - 1)


def points(tolerance: float) -> str:
    """``1 point``, ``0.5 points``: a tolerance in accuracy points, for messages."""
    return f"{tolerance:g} point" + ("" if tolerance == 1 else "s")


def _round_down(r: int, multiple: int) -> int:
    return (r // multiple) * multiple


def _next_rank(st: _Layer, step: int, cfg: GreedySearch) -> int | None:
    r = st.rank
    target = r - step
    if cfg.keep_dense and st.form(r) == "dense":
        target = min(target, st.break_even())
    target = _round_down(target, cfg.multiple)
    if target < 1 or target >= r:
        return None
    return target


def _build(st: _Layer, r: int, bias: Tensor | None) -> nn.Module:
    """The layer at rank ``r`` from the cached SVD (bias copied from the current layer)."""
    t = st.template
    w = t.weight
    if st.form(r) == "dense":
        return t
    root = st.S[:r].sqrt()
    a = root[:, None] * st.Vh[:r]
    b = st.U[:, :r] * root[None, :]
    if st.form(r) == "truncated":
        layer = copy.deepcopy(t)
        with torch.no_grad():
            layer.weight.copy_(linalg.unmatricize(b @ a, w.shape).to(w.dtype))
            if bias is not None:
                layer.bias.copy_(bias)
        return layer
    cls = LowRankLinear if isinstance(t, nn.Linear) else LowRankConv2d
    layer = cls.from_factors(t, a.to(w.dtype), b.to(w.dtype), st.name)
    with torch.no_grad():
        if bias is not None:
            layer.second.bias.copy_(bias)
    return layer


def _current_bias(mod: nn.Module) -> Tensor | None:
    b = mod.second.bias if isinstance(mod, LowRankLayer) else mod.bias
    return None if b is None else b.detach().clone()


def _refresh(st: _Layer, mod: nn.Module) -> None:
    """Recompute the cached SVD from the layer as it is now (after fine-tuning)."""
    if isinstance(mod, LowRankLayer):
        st.U, st.S, st.Vh = linalg.svd_of_product(*mod.thin_factors())
    else:
        st.U, st.S, st.Vh = linalg.svd(mod.weight)
        if st.form(st.rank) == "dense":
            # an untouched dense layer keeps its own (fine-tuned) weight as the template
            st.template = mod


def _check_eval(res: Any) -> dict[str, float]:
    if not isinstance(res, Mapping) or "loss" not in res or "acc" not in res:
        raise TypeError(
            f"`evaluate(model)` must return a mapping with 'loss' and 'acc' (validation), got {res!r}; "
            f"use lorita.BatchEvaluator(val_loader)"
        )
    out = {"loss": float(res["loss"]), "acc": float(res["acc"])}
    if not math.isfinite(out["acc"]):
        raise ValueError(f"`evaluate(model)` returned a non-finite accuracy {out['acc']}")
    return out


def _warm_start(
    work: nn.Module,
    states: list[_Layer],
    cfg: GreedySearch,
    target_modules: Targets,
    exclude_modules: Targets,
    run_eval: Callable[[], dict[str, float]],
    floor: float,
) -> dict[str, float]:
    """Swap every layer to its ``cfg.start`` rank; return the validation result there.

    Raises:
        ValueError: the start already falls below the tolerance floor (names the policy, the
            accuracy and the floor); ``work`` is then partly truncated, but it is search's own
            copy, so the caller's model is untouched.
    """
    ranks = select_ranks(work, cfg.start, target_modules, exclude_modules)
    modules = dict(work.named_modules())
    for st in states:
        r = min(ranks.get(st.name, st.max_rank), st.max_rank)
        if cfg.multiple > 1:
            r = max(_round_down(r, cfg.multiple), min(cfg.multiple, st.max_rank))
        if cfg.keep_dense and st.form(r) == "truncated":
            r = st.max_rank
        if r < st.max_rank:
            _set_module(work, st.name, _build(st, r, _current_bias(modules[st.name])))
            st.rank = r
    res = run_eval()
    if res["acc"] < floor:
        raise ValueError(
            f"search start {policy_string(cfg.start)} already has val acc {100 * res['acc']:.2f}% < floor "
            f"{100 * (floor + 1e-12):.2f}% (reference − {points(cfg.tolerance)}); start from a more "
            f"conservative policy (e.g. energy:0.9999) or none"
        )
    return res


def _auto_step(states: list[_Layer], multiple: int) -> int:
    top = max(st.max_rank for st in states)
    step = 1 << max(0, int(math.floor(math.log2(max(1, top // 8)))))
    return max(step, multiple)


class _GreedyRun:
    """One search: the working model, the layer states, the counters and the trace."""

    def __init__(
        self,
        model: nn.Module,
        evaluate: Callable[[nn.Module], Mapping[str, float]],
        cfg: GreedySearch,
        example_inputs: Any,
        finetune_data: Iterable[tuple[Tensor, Tensor]] | None,
        teacher: nn.Module | None,
        target_modules: Targets,
        exclude_modules: Targets,
        device: torch.device | str,
    ) -> None:
        self.t0 = time.perf_counter()
        self.cfg, self.evaluate, self.finetune_data, self.device = cfg, evaluate, finetune_data, device
        self.work = merge(model)  # a copy; dense layers everywhere
        layers = [
            (n, m)
            for n, m in weight_layers(self.work, target_modules, exclude_modules)
            if type(m) in (nn.Linear, nn.Conv2d)
        ]
        if not layers:
            raise ValueError("no Linear/Conv2d layer to search; check `target_modules` / `exclude_modules`")
        self.dense_cost = count_macs(self.work, example_inputs)
        self.states = [self._layer_state(fqn, mod) for fqn, mod in layers]
        self.use_params = isinstance(cfg.budget, ParamBudget)  # cost unit: params with a ParamBudget
        self.dense_target = sum(self.layer_cost(st, st.max_rank) for st in self.states)
        self.other_macs = self.dense_cost.total_macs - sum(st.positions * st.m * st.n for st in self.states)
        self.other_params = self.dense_cost.total_params - sum(st.m * st.n for st in self.states)
        if cfg.finetune is not None and cfg.finetune.distill is not None and teacher is None:
            teacher = copy.deepcopy(self.work).eval()
        self.teacher = teacher
        self.n_evals = self.commits = self.finetunes = 0
        self.trace: list[dict[str, Any]] = []
        self.reference = self.run_eval()
        self.floor = self.reference["acc"] - cfg.tolerance / 100.0 - 1e-12
        self.current = dict(self.reference)
        self.modules = dict(self.work.named_modules())
        if cfg.start is not None:
            self.current = _warm_start(
                self.work, self.states, cfg, target_modules, exclude_modules, self.run_eval, self.floor
            )
            self.modules = dict(self.work.named_modules())

    def _layer_state(self, fqn: str, mod: nn.Module) -> _Layer:
        w = mod.weight.detach()
        m, n = int(w.shape[0]), int(w[0].numel())
        row_macs = self.dense_cost.row(fqn).macs or 0
        positions = max(1, row_macs // (m * n)) if row_macs else 1
        U, S, Vh = linalg.svd(w)
        bias_params = 0 if mod.bias is None else mod.bias.numel()
        return _Layer(fqn, mod, m, n, positions, bias_params, min(m, n), U, S, Vh)

    # -- costs and bookkeeping ------------------------------------------------------------
    def layer_cost(self, st: _Layer, r: int) -> int:
        return st.weight_cost(r) * (1 if self.use_params else st.positions)

    def totals(self) -> tuple[int, int, float]:
        """``(MACs per sample, params, deployable fraction of the targeted layers)`` now."""
        macs = self.other_macs + sum(st.positions * st.weight_cost(st.rank) for st in self.states)
        params = self.other_params + sum(st.weight_cost(st.rank) for st in self.states)
        frac = sum(self.layer_cost(st, st.rank) for st in self.states) / self.dense_target
        return macs, params, frac

    def budget_met(self) -> bool | None:
        budget = self.cfg.budget
        return None if budget is None else self.totals()[2] <= budget.fraction + 1e-12

    def run_eval(self) -> dict[str, float]:
        self.n_evals += 1
        return _check_eval(self.evaluate(self.work))

    def log(
        self, event: str, layer: str | None, rank: int | None, step: int, res: Mapping[str, float], ft: bool
    ) -> None:
        macs, params, frac = self.totals()
        self.trace.append(
            {
                "step": self.commits,
                "event": event,
                "layer": layer,
                "rank": rank,
                "step_size": step,
                "macs": macs,
                "params": params,
                "target_fraction": frac,
                "val_loss": res["loss"],
                "val_acc": res["acc"],
                "finetuned": ft,
                "seconds": round(time.perf_counter() - self.t0, 3),
            }
        )

    def do_finetune(self) -> None:
        seed = self.cfg.seed + 1000 * self.finetunes
        finetune(self.work, self.finetune_data, self.cfg.finetune, teacher=self.teacher, seed=seed, device=self.device)
        self.finetunes += 1
        mods = dict(self.work.named_modules())
        for st in self.states:
            _refresh(st, mods[st.name])

    def _snapshot(self) -> tuple[nn.Module, list[_Layer]]:
        return copy.deepcopy((self.work, self.states))

    def _restore(self, snapshot: tuple[nn.Module, list[_Layer]]) -> None:
        self.work, self.states = snapshot
        self.modules = dict(self.work.named_modules())

    # -- one step ---------------------------------------------------------------------------
    def candidates(self, step: int) -> list[Candidate]:
        """Every layer one ``step`` lower, each evaluated alone on the working model."""
        cands: list[Candidate] = []
        for st in self.states:
            r2 = _next_rank(st, step, self.cfg)
            if r2 is None:
                continue
            old = self.modules[st.name]
            cand = _build(st, r2, _current_bias(old))
            _set_module(self.work, st.name, cand)
            try:
                res = self.run_eval()
            finally:
                _set_module(self.work, st.name, old)
            cands.append((st, r2, cand, res))
        return cands

    def score(self, c: Candidate) -> float:
        st, r2, _, res = c
        if self.cfg.criterion == "loss":
            return res["loss"]
        saved = self.layer_cost(st, st.rank) - self.layer_cost(st, r2)
        return (res["loss"] - self.current["loss"]) / max(saved, 1)

    def rescue(self, cands: list[Candidate], step: int) -> Candidate | None:
        """No candidate fits: apply the best one, fine-tune, keep it if validation recovers."""
        best = min(cands, key=self.score)
        snapshot = self._snapshot()
        st, r2, cand, _ = best
        _set_module(self.work, st.name, cand)
        st.rank = r2
        self.do_finetune()
        res = self.run_eval()
        if res["acc"] >= self.floor:
            return (st, r2, None, res)
        logger.info(
            "search: fine-tuning did not recover %s -> %d (val acc %.4f < %.4f)", st.name, r2, res["acc"], self.floor
        )
        self._restore(snapshot)
        self.log("finetune_rejected", st.name, r2, step, res, True)
        return None

    def commit(self, chosen: Candidate, step: int, finetuned: bool) -> tuple[_Layer, int, bool]:
        st, r2, cand, res = chosen
        if cand is not None:  # not already swapped in by fine-tuning
            _set_module(self.work, st.name, cand)
            st.rank = r2
        self.modules = dict(self.work.named_modules())
        self.commits += 1
        self.current = dict(res)
        ft_cfg = self.cfg.finetune
        if ft_cfg is not None and ft_cfg.when == "every" and not finetuned:
            snapshot = self._snapshot()
            self.do_finetune()
            res2 = self.run_eval()
            if res2["acc"] >= self.floor:
                self.current, finetuned = res2, True
            else:  # fine-tuning made it worse on validation: keep the pre-fine-tune weights
                self._restore(snapshot)
                st = next(s for s in self.states if s.name == st.name)
        return st, r2, finetuned

    def stop_reason(self) -> str | None:
        cfg = self.cfg
        if self.budget_met():
            return f"budget met ({self.totals()[2]:.4f} <= {cfg.budget.fraction:g})"
        if cfg.max_commits is not None and self.commits >= cfg.max_commits:
            return f"max_commits={cfg.max_commits} reached"
        return None

    # -- the loop -------------------------------------------------------------------------
    def run(self, progress: bool) -> str:
        """Search until the budget, the commit limit or the tolerance stops it; the stop reason."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        step = max(cfg.initial_step or _auto_step(self.states, cfg.multiple), cfg.multiple)
        self.step = step
        self.log("start", None, None, step, self.current, False)
        bar = tqdm(desc="rank search", disable=not progress, leave=False, dynamic_ncols=True)
        try:
            while (reason := self.stop_reason()) is None:
                cands = self.candidates(step)
                fits = [c for c in cands if c[3]["acc"] >= self.floor]
                chosen, finetuned = None, False
                if fits:
                    chosen = min(fits, key=self.score)  # min is stable: ties go to the first layer
                elif cands and cfg.finetune is not None:
                    chosen = self.rescue(cands, step)
                    finetuned = chosen is not None
                if chosen is None:
                    if step <= cfg.multiple:
                        reason = (
                            f"no reduction keeps val acc >= {100 * (self.floor + 1e-12):.2f}% (reference "
                            f"{100 * self.reference['acc']:.2f}% − {points(cfg.tolerance)}) at the smallest step"
                        )
                        break
                    step = self.step = max(cfg.multiple, step // 2)
                    self.log("halve", None, None, step, self.current, False)
                    continue
                st, r2, finetuned = self.commit(chosen, step, finetuned)
                self.log("commit", st.name, r2, step, self.current, finetuned)
                macs = self.totals()[0]
                logger.info(
                    "search: %s -> rank %d (step %d): MACs %d, val acc %.4f",
                    st.name,
                    r2,
                    step,
                    macs,
                    self.current["acc"],
                )
                bar.update(1)
                bar.set_postfix(
                    step=step, macs=f"{macs / self.dense_cost.total_macs:.1%}", acc=f"{self.current['acc']:.4f}"
                )
        finally:
            bar.close()
        return reason

    def result(self, stop_reason: str, result_type: type[SearchResult]) -> SearchResult:
        """Evaluate the final model and package everything (see :class:`SearchResult`)."""
        final = self.run_eval()
        macs, params, frac = self.totals()
        self.log("stop", None, None, self.step, final, False)
        met = self.budget_met()
        if self.cfg.budget is not None and not met:
            logger.warning(
                "search: budget %g not reached within the tolerance (stopped at %.4f)", self.cfg.budget.fraction, frac
            )
        return result_type(
            model=self.work,
            ranks={st.name: st.rank for st in self.states},
            forms={st.name: st.form(st.rank) for st in self.states},
            trace=self.trace,
            reference=self.reference,
            final=final,
            macs=macs,
            params=params,
            dense_macs=self.dense_cost.total_macs,
            dense_params=self.dense_cost.total_params,
            target_fraction=frac,
            budget_met=met,
            stop_reason=stop_reason,
            evaluations=self.n_evals,
            finetunes=self.finetunes,
            wall_seconds=time.perf_counter() - self.t0,
            config=self.cfg.to_dict(),
        )

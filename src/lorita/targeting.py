"""The one matcher that decides which modules lorita touches (PEFT-style targeting).

Rules (PEFT ``check_target_module_exists``, torchao ``filter_fn``):

* ``target_modules=None`` — every module of a supported kind;
  ``str`` — a regular expression that must ``re.fullmatch`` the module's fully qualified name
  (``fqn``, as in ``model.named_modules()``); a list/tuple/set of ``str`` — an fqn matches if it
  equals a name or ends with ``"." + name``.
* ``exclude_modules`` — same syntax, applied first.
* ``filter_fn(module, fqn) -> bool`` — last word.

An ``exclude_modules`` pattern, or a ``target_modules`` list entry, that matches no module at all
(of any kind; an attention's ``in_proj``/``out_proj`` count as names) is logged as a WARNING
naming it: excluding nothing is not an error, but a typo must be visible.

Matching modules that cannot be handled (wrong kind, ``groups != 1``, a module registered under
two names, a weight tied to another module) are returned in :attr:`TargetPlan.skipped` with the
reason, never silently dropped and never modified.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from torch import nn

__all__ = ["TargetPlan", "find_targets", "matches", "Targets", "is_inside", "child_name", "tied_modules", "aliases"]

logger = logging.getLogger(__name__)

Targets = str | Iterable[str] | None
Checker = Callable[[nn.Module], str | None]


def is_inside(fqn: str, outer: Iterable[str]) -> bool:
    """True when module ``fqn`` lies strictly inside one of the modules named in ``outer``.

    ``"a.b"`` is inside ``"a"``, ``"ab"`` and ``"a"`` itself are not; the root module ``""``
    contains every other module. Used wherever a layer handled as a whole (an attention module, the
    two halves of a low-rank pair) must not be visited again through its children.
    """
    for o in outer:
        if fqn != o and (o == "" or fqn.startswith(o + ".")):
            return True
    return False


def matches(fqn: str, spec: Targets) -> bool:
    """Whether ``fqn`` matches a ``target_modules``/``exclude_modules`` spec (see module docs)."""
    if spec is None:
        return True
    if isinstance(spec, str):
        return re.fullmatch(spec, fqn) is not None
    for name in spec:
        if not isinstance(name, str):
            raise TypeError(f"module names must be str, got {name!r} ({type(name).__name__})")
        if fqn == name or fqn.endswith("." + name):
            return True
    return False


def child_name(fqn: str, name: str) -> str:
    """The fqn of ``name`` under module ``fqn`` (``""`` is the root: no leading dot)."""
    return f"{fqn}.{name}" if fqn else name


def _validate_spec(spec: Targets, arg: str) -> None:
    if spec is None:
        return
    if isinstance(spec, str):
        try:
            re.compile(spec)
        except re.error as exc:
            raise ValueError(f"`{arg}`={spec!r} is not a valid regular expression: {exc}") from None
        return
    if not isinstance(spec, Iterable):
        raise TypeError(f"`{arg}` must be None, a regex str or a list of names, got {type(spec).__name__}")


@dataclass
class TargetPlan:
    """What a surgery call will touch.

    Attributes:
        targets: ``[(fqn, module)]`` in ``named_modules`` order.
        skipped: ``{fqn: reason}`` for matching modules left untouched.
    """

    targets: list[tuple[str, nn.Module]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.targets]


def aliases(model: nn.Module) -> dict[str, str]:
    """``{fqn: other fqns}`` for modules registered under more than one name (one object)."""
    names: dict[int, list[str]] = {}
    for fqn, mod in model.named_modules(remove_duplicate=False):
        names.setdefault(id(mod), []).append(fqn)
    out: dict[str, str] = {}
    for group in names.values():
        if len(group) > 1:
            for n in group:
                out[n] = ", ".join(f"`{o}`" for o in group if o != n)
    return out


def tied_modules(model: nn.Module) -> dict[str, str]:
    """``{fqn: other fqn(s)}`` for modules whose own parameters are also owned by another module
    (tied weights, e.g. a language-model head sharing its embedding's weight)."""
    owners: dict[int, list[str]] = {}
    for fqn, mod in model.named_modules(remove_duplicate=False):
        for p in mod.parameters(recurse=False):
            owners.setdefault(id(p), []).append(fqn)
    tied: dict[str, str] = {}
    for names in owners.values():
        uniq = list(dict.fromkeys(names))
        if len(uniq) > 1:
            for n in uniq:
                tied[n] = ", ".join(o for o in uniq if o != n)
    return tied


def _unmatched(spec: Targets, names: list[str]) -> list[str]:
    """The patterns of ``spec`` (a regex, or each entry of a list) that match none of ``names``."""
    if spec is None:
        return []
    if isinstance(spec, str):
        return [] if any(re.fullmatch(spec, n) for n in names) else [spec]
    return [entry for entry in spec if not any(matches(n, [entry]) for n in names)]


def _warn_unmatched(model: nn.Module, arg: str, unmatched: list[str], names: list[str]) -> None:
    if not unmatched:
        return
    shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
    logger.warning(
        "`%s` %s %s match%s no module of %s; check the spelling (a regex full-matching the module name, or a "
        "list of names/suffixes). Module names: [%s]",
        arg, "entry" if len(unmatched) == 1 else "entries", ", ".join(repr(u) for u in unmatched),
        "es" if len(unmatched) == 1 else "", type(model).__name__, shown or "none",
    )


def find_targets(
    model: nn.Module,
    kinds: Mapping[type, Checker],
    target_modules: Targets = None,
    exclude_modules: Targets = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    what: str = "layers",
    warn_unmatched: bool = True,
) -> TargetPlan:
    """Match modules of ``model`` against the targeting rules.

    Args:
        model: any ``nn.Module``.
        kinds: ``{module type: checker}``; a checker returns ``None`` when it can handle the
            module, else the reason it cannot. Types are matched exactly (not subclasses), so a
            custom subclass with its own forward is never replaced behind the user's back.
        target_modules, exclude_modules, filter_fn: see the module docstring.
        what: noun used in the error message (e.g. ``"Linear/Conv2d layers"``).
        warn_unmatched: log a WARNING for each ``exclude_modules`` pattern / ``target_modules``
            list entry that matches no module (False: a repeated call on a copy stays quiet).

    Returns:
        :class:`TargetPlan`.

    Raises:
        ValueError: an invalid regex, or nothing matched (the message lists candidates).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    _validate_spec(target_modules, "target_modules")
    _validate_spec(exclude_modules, "exclude_modules")
    if isinstance(target_modules, str) or target_modules is None:
        spec_t = target_modules
    else:
        spec_t = list(target_modules)
    spec_x = exclude_modules if isinstance(exclude_modules, str) or exclude_modules is None else list(exclude_modules)
    plan = TargetPlan()
    seen: dict[int, str] = {}
    tied = tied_modules(model)
    candidates: list[str] = []
    names: list[str] = []  # every name a pattern may match (attention projections included)
    for fqn, mod in model.named_modules(remove_duplicate=False):
        if fqn == "" and type(mod) not in kinds:
            continue  # the root is a target only when it is itself a layer (e.g. a bare nn.Linear)
        names.append(fqn)
        if isinstance(mod, nn.MultiheadAttention):
            names += [child_name(fqn, "in_proj"), child_name(fqn, "out_proj")]
        supported = type(mod) in kinds
        if supported:
            candidates.append(fqn)
        if spec_x is not None and matches(fqn, spec_x):
            continue
        if spec_t is None and not supported:
            continue
        if not matches(fqn, spec_t):
            continue
        if filter_fn is not None and not filter_fn(mod, fqn):
            continue
        if not supported:
            # Named explicitly but of a kind we do not handle. Containers are silently passed
            # over (a regex like "layer1.*" matches blocks as well as their layers).
            if any(True for _ in mod.parameters(recurse=False)):
                plan.skipped[fqn] = f"{type(mod).__name__} is not a supported layer kind"
            continue
        if id(mod) in seen:
            plan.skipped[fqn] = f"same module object as `{seen[id(mod)]}`"
            plan.skipped.setdefault(seen[id(mod)], f"same module object as `{fqn}`")
            plan.targets = [(n, m) for n, m in plan.targets if n != seen[id(mod)]]
            continue
        seen[id(mod)] = fqn
        if fqn in tied:
            plan.skipped[fqn] = f"weight is shared with `{tied[fqn]}`"
            continue
        reason = kinds[type(mod)](mod)
        if reason is not None:
            plan.skipped[fqn] = reason
            continue
        plan.targets.append((fqn, mod))
    if not plan.targets:
        shown = ", ".join(candidates[:12]) + (" ..." if len(candidates) > 12 else "")
        detail = f" Skipped: {plan.skipped}." if plan.skipped else ""
        raise ValueError(
            f"no {what} matched target_modules={target_modules!r}, exclude_modules={exclude_modules!r}."
            f"{detail} Candidates: [{shown or 'none'}]. Fix `target_modules` (regex full-match on the "
            f"module name, or a list of names/suffixes)."
        )
    if not warn_unmatched:
        return plan
    names = list(dict.fromkeys(names))
    _warn_unmatched(model, "exclude_modules", _unmatched(spec_x, names), names)
    if spec_t is not None and not isinstance(spec_t, str):
        _warn_unmatched(model, "target_modules", _unmatched(spec_t, names), names)
    return plan

"""Choosing alpha from a grid sweep on validation splits.

Two rules, both reported in every run:

- ``mean``: the highest mean of (mean patching-task accuracy, mean support-task accuracy):
  the two groups weigh the same, whatever their number of tasks.
- ``constrained``: the highest mean patching accuracy subject to the support tasks staying
  within ``epsilon`` points of their zero-shot (alpha = 0) accuracy: the paper's intent
  ("improve the patching task, keep the supported tasks within about one point").
  ``constraint="each"`` bounds every support task; ``constraint="mean"`` bounds their mean
  (the paper's single ImageNet number plays that role).

Ties go to the smaller alpha (closer to the zero-shot model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from paint.config import StrictModel, alpha_grid
from paint.errors import PaintError

Rule = Literal["mean", "constrained"]
Constraint = Literal["each", "mean"]
SweepPoint = Mapping[str, object]  # {"alpha": float, "val": {task: accuracy}}


def _group_mean(accs: Mapping[str, float], tasks: Sequence[str]) -> float:
    return float(np.mean([accs[t] for t in tasks])) if tasks else float("nan")


def mean_score(accs: Mapping[str, float], patch: Sequence[str], support: Sequence[str]) -> float:
    """Mean of the patching group's and the support group's mean accuracy."""
    if not support:
        return _group_mean(accs, patch)
    return 0.5 * (_group_mean(accs, patch) + _group_mean(accs, support))


def feasible(
    accs: Mapping[str, float],
    zeroshot: Mapping[str, float],
    support: Sequence[str],
    epsilon: float,
    constraint: Constraint = "each",
) -> bool:
    """Support accuracy within ``epsilon`` points (accuracies are fractions) of zero-shot.

    ``each``: every support task; ``mean``: the mean over support tasks.
    """
    bound = epsilon / 100.0 + 1e-12
    if constraint == "mean":
        return not support or _group_mean(accs, support) >= _group_mean(zeroshot, support) - bound
    return all(accs[t] >= zeroshot[t] - bound for t in support)


def select_alpha(
    sweep: Sequence[SweepPoint],
    patch: Sequence[str],
    support: Sequence[str],
    rule: Rule = "mean",
    epsilon: float = 1.0,
    constraint: Constraint = "each",
) -> dict[str, object]:
    """Pick alpha from sweep points; return ``{"alpha", "rule", "score", "feasible"}``.

    Args:
        sweep: points with ``alpha`` and ``val`` accuracies (fractions) per task; must include alpha 0
            for the constrained rule.
        patch: patching task names.
        support: support task names.
        rule: ``mean`` or ``constrained``.
        epsilon: allowed support drop in accuracy points, for ``constrained``.
        constraint: ``each`` support task or their ``mean``, for ``constrained``.
    """
    if not sweep:
        raise PaintError("the sweep is empty: give at least one alpha")
    points = sorted(sweep, key=lambda p: float(p["alpha"]))
    if rule == "mean":
        scored = [(mean_score(p["val"], patch, support), -float(p["alpha"]), p) for p in points]
        score, _, best = max(scored, key=lambda x: (x[0], x[1]))
        return {"alpha": float(best["alpha"]), "rule": rule, "score": score, "feasible": True}
    if rule == "constrained":
        zs = next((p for p in points if float(p["alpha"]) == 0.0), None)
        if zs is None:
            raise PaintError("the constrained rule needs alpha 0 in the sweep (the zero-shot reference)")
        ok = [p for p in points if feasible(p["val"], zs["val"], support, epsilon, constraint)]
        score, _, best = max(((_group_mean(p["val"], patch), -float(p["alpha"]), p) for p in ok), key=lambda x: (x[0], x[1]))
        return {"alpha": float(best["alpha"]), "rule": rule, "score": score, "feasible": True, "epsilon": epsilon, "constraint": constraint}
    raise PaintError(f"unknown selection rule {rule!r}; use 'mean' or 'constrained'")


def rule_key(rule: Rule, constraint: Constraint = "each") -> str:
    """The name of a rule as reported: ``mean``, ``constrained-each`` or ``constrained-mean``."""
    return "mean" if rule == "mean" else f"constrained-{constraint}"


def select_candidates(
    sweep: Sequence[SweepPoint], patch: Sequence[str], support: Sequence[str], epsilon: float = 1.0
) -> dict[str, dict[str, object]]:
    """Every rule's choice, keyed by :func:`rule_key`: runs report all of them, whichever they use."""
    return {
        "mean": select_alpha(sweep, patch, support, "mean"),
        "constrained-each": select_alpha(sweep, patch, support, "constrained", epsilon, "each"),
        "constrained-mean": select_alpha(sweep, patch, support, "constrained", epsilon, "mean"),
    }


class GridSelection(StrictModel):
    """Config fields of runs that sweep an alpha grid on validation and pick alpha by a rule.

    ``rule`` and ``constraint`` name the rule used (reported as :func:`rule_key`); every rule's
    choice is reported beside it. The default bounds the support tasks' mean, as ``paint demo`` does.
    """

    alphas: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)], min_length=1)
    rule: Rule = "constrained"
    epsilon: float = Field(1.0, ge=0.0)
    constraint: Constraint = "mean"

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        return alpha_grid(v)

    @property
    def rule_name(self) -> str:
        return rule_key(self.rule, self.constraint)

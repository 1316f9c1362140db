"""Choosing alpha from points already evaluated (a grid sweep): every rule is an objective.

The rules reported by every run are the objectives of :mod:`paint.selection.objectives` applied to
the same sweep through the grid strategy's evaluator:

- ``mean``: the highest mean of (mean patching accuracy, mean support accuracy);
- ``constrained-mean`` / ``constrained-each``: the highest mean patching accuracy with the support
  tasks' mean (or every support task) within ``epsilon`` points of zero-shot (alpha = 0).

Ties go to the smaller alpha (closer to the zero-shot model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from paint.errors import PaintError
from paint.selection.config import rule_key
from paint.selection.evaluator import Evaluator, alpha_key
from paint.selection.objectives import TaskMetrics, make_objective

SweepPoint = Mapping[str, Any]  # {"alpha": float, "val": {task: accuracy}, "val_loss"?: {task: loss}}
REPORTED_RULES: tuple[tuple[str, str], ...] = (
    ("mean_accuracy", "mean"),
    ("constrained", "each"),
    ("constrained", "mean"),
)


def point_metrics(point: SweepPoint) -> TaskMetrics:
    """A sweep point's validation metrics as the objectives read them."""
    losses = point.get("val_loss") or {}
    return {
        t: {"accuracy": float(a), **({"loss": float(losses[t])} if t in losses else {})}
        for t, a in point["val"].items()
    }


def select_alpha(
    sweep: Sequence[SweepPoint],
    patch: Sequence[str],
    support: Sequence[str],
    objective: str = "constrained",
    epsilon: float = 1.0,
    constraint: str = "mean",
    reference: TaskMetrics | None = None,
) -> dict[str, Any]:
    """The best alpha of a sweep under one objective: ``{"alpha", "rule", "score", "feasible"}``.

    Args:
        sweep: points with ``alpha`` and ``val`` accuracies (fractions) per task; must include
            alpha 0 (the zero-shot reference).
        patch: patching task names.
        support: support task names.
        objective: ``constrained``, ``mean_accuracy`` (or ``mean``), or ``loss_sum`` (needs ``val_loss``).
        epsilon: allowed support drop in accuracy points, for ``constrained``.
        constraint: bound the support tasks' ``mean`` or ``each`` of them, for ``constrained``.
        reference: the zero-shot metrics when they are not the sweep's alpha 0 (a line that starts
            elsewhere, as in sequential multi-task patching).

    Example:
        >>> sweep = [{"alpha": 0.0, "val": {"p": 0.2, "s": 0.9}}, {"alpha": 0.5, "val": {"p": 0.8, "s": 0.895}}]
        >>> select_alpha(sweep, ["p"], ["s"])["alpha"]
        0.5
    """
    if not sweep:
        raise PaintError("the sweep is empty: give at least one alpha")
    by_alpha = {alpha_key(float(p["alpha"])): point_metrics(p) for p in sweep}
    if 0.0 not in by_alpha and reference is None:
        raise PaintError("choosing alpha needs alpha 0 in the sweep (the zero-shot reference)")
    name = "mean_accuracy" if objective == "mean" else objective
    ev = Evaluator(
        lambda a, grad: by_alpha[a],
        make_objective(name, patch, support, epsilon, constraint),
        None,
        reference,
        bounds=None,
    )
    for a in sorted(by_alpha):
        ev(a)
    best = ev.best()
    out: dict[str, Any] = {
        "alpha": best.alpha,
        "rule": rule_key(name, constraint),
        "score": -best.value,
        "feasible": best.feasible,
    }
    if name == "constrained":
        out.update(epsilon=epsilon, constraint=constraint)
    return out


def select_candidates(
    sweep: Sequence[SweepPoint],
    patch: Sequence[str],
    support: Sequence[str],
    epsilon: float = 1.0,
    reference: TaskMetrics | None = None,
) -> dict[str, dict[str, Any]]:
    """Every reported rule's choice, keyed by :func:`paint.selection.config.rule_key`."""
    return {rule_key(o, c): select_alpha(sweep, patch, support, o, epsilon, c, reference) for o, c in REPORTED_RULES}

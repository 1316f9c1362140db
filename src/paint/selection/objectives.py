"""Objectives: how the validation metrics at one alpha become one number to minimise.

A *measure* is the expensive part: alpha -> per-task validation metrics of the model
``theta_alpha`` (``{"task": {"accuracy", "loss", "dloss"?}}``). An :class:`Objective` turns the
metrics at alpha (and at the reference, the zero-shot model) into one number to minimise:

  - ``mean_accuracy``: minus the mean of (mean patching accuracy, mean support accuracy), the
    PAINT paper's "average of the patching and supported tasks".
  - ``constrained``: minus the mean patching accuracy, subject to the support tasks staying
    within ``epsilon`` points of their zero-shot accuracy (every task, or their mean). An
    infeasible alpha scores ``1 + total violation`` (worse than every feasible alpha, and sloped
    towards feasibility).
  - ``loss_sum``: L_patch(alpha) / L_patch(0) + L_supp(alpha) / L_supp(0), the smooth proxy of
    the quasi-convexity study (see REFERENCE.md); the only one with a derivative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from paint.errors import PaintError
from paint.stats import decode_correct, paired_drop_lower

TaskMetrics = dict[str, dict[str, Any]]  # task name -> {"accuracy", "loss", "dloss"?, ...}
Measure = Callable[[float, bool], TaskMetrics]  # (alpha, need_derivative) -> metrics


class Objective(Protocol):
    """Turns metrics at alpha and at the reference (the zero-shot model) into a value to minimise."""

    name: str
    differentiable: bool

    def value(self, metrics: TaskMetrics, reference: TaskMetrics) -> float: ...

    def derivative(self, metrics: TaskMetrics, reference: TaskMetrics) -> float: ...

    def feasible(self, metrics: TaskMetrics, reference: TaskMetrics) -> bool: ...


def _mean(metrics: TaskMetrics, tasks: Sequence[str], key: str) -> float:
    missing = [t for t in tasks if t not in metrics or key not in metrics[t]]
    if missing:
        raise PaintError(
            f"no {key} measured for task {missing[0]!r}; the objective needs every patching and support task"
        )
    return float(np.mean([metrics[t][key] for t in tasks]))


@dataclass(frozen=True)
class TaskGroups:
    """Which tasks are patched and which must be preserved."""

    patch: tuple[str, ...]
    support: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.patch:
            raise PaintError("an objective needs at least one patching task")


@dataclass(frozen=True)
class MeanAccuracy:
    """Minus the mean of (mean patching accuracy, mean support accuracy); support may be empty."""

    groups: TaskGroups
    name: str = "mean_accuracy"
    differentiable: bool = False

    def value(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        parts = [_mean(metrics, self.groups.patch, "accuracy")]
        if self.groups.support:
            parts.append(_mean(metrics, self.groups.support, "accuracy"))
        return -float(np.mean(parts))

    def derivative(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        raise PaintError(
            "objective 'mean_accuracy' has no derivative; use objective 'loss_sum' with strategy 'derivative'"
        )

    def feasible(self, metrics: TaskMetrics, reference: TaskMetrics) -> bool:
        return True


@dataclass(frozen=True)
class Constrained:
    """Largest mean patching accuracy with support accuracy within ``epsilon`` points of zero-shot.

    Accuracies are fractions; ``epsilon`` is in percentage points (1.0 = one point).
    ``constraint`` bounds every support task (``each``) or their mean (``mean``), as
    :func:`paint.selection.rules.feasible` does.
    """

    groups: TaskGroups
    epsilon: float = 1.0
    constraint: str = "mean"
    confidence: float | None = None  # hold the paired lower bound of the change, not its point estimate
    name: str = "constrained"
    differentiable: bool = False

    def _lower_change(self, metrics: TaskMetrics, reference: TaskMetrics, tasks: Sequence[str]) -> float:
        """Lower confidence bound of the support change (fraction), paired over the validation images."""
        missing = [t for t in tasks if "correct" not in metrics.get(t, {}) or "correct" not in reference.get(t, {})]
        if missing:
            raise PaintError(
                f"bound_confidence needs per-image results, and task {missing[0]!r} has none "
                "(strategies lines and blockwise, and the derivative measure, do not record them)"
            )
        after = [decode_correct(str(metrics[t]["correct"]), int(metrics[t]["n"])) for t in tasks]
        before = [decode_correct(str(reference[t]["correct"]), int(reference[t]["n"])) for t in tasks]
        return paired_drop_lower(after, before, float(self.confidence or 0.95))

    def violation(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        """Total shortfall (fraction) of support accuracy below zero-shot minus epsilon.

        With ``confidence``, the shortfall of the change's lower confidence bound (paired over the
        validation images) below minus epsilon: a margin that is as wide as the split is noisy.
        """
        eps = self.epsilon / 100.0
        if self.confidence is not None:
            groups = [self.groups.support] if self.constraint == "mean" else [(t,) for t in self.groups.support]
            return sum(max(0.0, -eps - self._lower_change(metrics, reference, g)) for g in groups if g)
        if self.constraint == "mean":
            if not self.groups.support:
                return 0.0
            floor = _mean(reference, self.groups.support, "accuracy") - eps
            return max(0.0, floor - _mean(metrics, self.groups.support, "accuracy"))
        total = 0.0
        for t in self.groups.support:
            floor = _mean(reference, (t,), "accuracy") - eps
            total += max(0.0, floor - _mean(metrics, (t,), "accuracy"))
        return total

    def margins(self, metrics: TaskMetrics, reference: TaskMetrics) -> list[float]:
        """Signed room (fraction) of each bounded group above its floor: negative where it is past it.

        One entry for the support mean (``mean``) or one per support task (``each``): the change
        (its point estimate, or with ``confidence`` its paired lower bound) plus epsilon. Their shape
        along alpha is what :func:`paint.selection.surrogate.edge_search` models to find the
        feasibility edge; empty without support tasks.
        """
        groups = [self.groups.support] if self.constraint == "mean" else [(t,) for t in self.groups.support]
        groups = [g for g in groups if g]
        if self.confidence is not None:
            changes = [self._lower_change(metrics, reference, g) for g in groups]
        else:
            changes = [_mean(metrics, g, "accuracy") - _mean(reference, g, "accuracy") for g in groups]
        return [c + self.epsilon / 100.0 for c in changes]

    def feasible(self, metrics: TaskMetrics, reference: TaskMetrics) -> bool:
        # A tiny slack so that floating-point noise in "acc0 - eps" never flips alpha = 0.
        return self.violation(metrics, reference) <= 1e-12

    def value(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        if self.feasible(metrics, reference):
            return -_mean(metrics, self.groups.patch, "accuracy")  # in [-1, 0]
        return 1.0 + self.violation(metrics, reference)  # > every feasible value

    def derivative(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        raise PaintError(
            "objective 'constrained' has no derivative; use objective 'loss_sum' with strategy 'derivative'"
        )


@dataclass(frozen=True)
class LossSum:
    """L_patch(a) / L_patch(0) + L_supp(a) / L_supp(0), each L a mean over its group's tasks."""

    groups: TaskGroups
    name: str = "loss_sum"
    differentiable: bool = True

    def _parts(self) -> list[tuple[str, ...]]:
        return [g for g in (self.groups.patch, self.groups.support) if g]

    def value(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        return float(sum(_mean(metrics, g, "loss") / _mean(reference, g, "loss") for g in self._parts()))

    def derivative(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        return float(sum(_mean(metrics, g, "dloss") / _mean(reference, g, "loss") for g in self._parts()))

    def feasible(self, metrics: TaskMetrics, reference: TaskMetrics) -> bool:
        return True


@dataclass(frozen=True)
class CurveValue:
    """The single task's ``loss`` as is: for synthetic curves and benchmarks."""

    task: str = "curve"
    name: str = "curve"
    differentiable: bool = True

    def value(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        return float(metrics[self.task]["loss"])

    def derivative(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        return float(metrics[self.task]["dloss"])

    def feasible(self, metrics: TaskMetrics, reference: TaskMetrics) -> bool:
        return True


OBJECTIVES = ("mean_accuracy", "constrained", "loss_sum")


def make_objective(
    name: str,
    patch: Sequence[str],
    support: Sequence[str] = (),
    epsilon: float = 1.0,
    constraint: str = "mean",
    confidence: float | None = None,
) -> Objective:
    """Build a named objective over the given patching and support task names.

    ``confidence`` (``constrained`` only) holds the support change's paired lower confidence
    bound within epsilon instead of its point estimate.
    """
    if confidence is not None and name != "constrained":
        raise PaintError(f"bound_confidence needs objective 'constrained', not {name!r}")
    groups = TaskGroups(tuple(patch), tuple(support))
    if name == "mean_accuracy":
        return MeanAccuracy(groups)
    if name == "constrained":
        if constraint not in ("each", "mean"):
            raise PaintError(
                f"unknown constraint {constraint!r}; use 'each' (every support task) or 'mean' (their mean)"
            )
        return Constrained(groups, epsilon, constraint, confidence)
    if name == "loss_sum":
        return LossSum(groups)
    raise PaintError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")

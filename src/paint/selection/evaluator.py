"""The evaluator: alpha -> objective value, each distinct alpha measured once, under a budget.

It sits between a measure and a strategy: it evaluates each distinct alpha once, enforces the
budget, and records every evaluation in order, so every strategy is charged the same way and
strategies that share an evaluator (or a results file under the measure) share work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from paint.errors import PaintError
from paint.selection.objectives import CurveValue, Measure, Objective, TaskMetrics


def alpha_key(alpha: float) -> float:
    """Cache key of an alpha: equal up to 1e-10, so 0.1 + 0.2 and 0.3 are one evaluation."""
    return round(float(alpha), 10)


# ----------------------------------------------------------------------------- objectives


class BudgetExhausted(Exception):
    """Raised inside a strategy when the next model evaluation would exceed the budget."""


@dataclass(frozen=True)
class Evaluation:
    """One objective evaluation: alpha, value, derivative (if asked) and the task metrics."""

    alpha: float
    value: float
    derivative: float | None
    feasible: bool
    metrics: TaskMetrics = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Evaluator:
    """Counting, caching objective: alpha -> value, each distinct alpha measured once.

    The reference metrics (zero-shot, alpha = 0 unless given) are measured through the same
    cache and count against the budget like any other evaluation.

    Args:
        measure: (alpha, need_derivative) -> task metrics; the expensive call.
        objective: how metrics become a value to minimise.
        budget: most model evaluations (distinct measurements); None = unlimited.
        reference: metrics of the zero-shot model, when they do not come from alpha = 0 on
            this line (sequential and parallel multi-task patching).
        bounds: the alphas a strategy may ask for; None for any (a stored sweep that extrapolates).
    """

    def __init__(
        self,
        measure: Measure,
        objective: Objective,
        budget: int | None = None,
        reference: TaskMetrics | None = None,
        bounds: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        self.measure = measure
        self.objective = objective
        self.budget = budget
        self._reference = reference
        self.bounds = bounds
        self._metrics: dict[float, TaskMetrics] = {}
        self._has_grad: set[float] = set()
        self._evals: dict[float, Evaluation] = {}
        self.evaluations: list[Evaluation] = []  # in the order they were first made
        self.n_model_evals = 0

    def _measure(self, alpha: float, grad: bool) -> TaskMetrics:
        key = alpha_key(alpha)
        if key in self._metrics and (not grad or key in self._has_grad):
            return self._metrics[key]
        if self.budget is not None and self.n_model_evals >= self.budget:
            raise BudgetExhausted(f"budget of {self.budget} model evaluations used")
        metrics = self.measure(key, grad)
        self.n_model_evals += 1
        self._metrics[key] = metrics
        if grad:
            self._has_grad.add(key)
        return metrics

    def reference(self) -> TaskMetrics:
        if self._reference is None:
            self._reference = self._measure(0.0, False)
        return self._reference

    def evaluate(self, alpha: float, grad: bool = False) -> Evaluation:
        """The evaluation at ``alpha`` (cached); with ``grad`` also its derivative."""
        if math.isnan(alpha) or (self.bounds is not None and not self.bounds[0] <= alpha <= self.bounds[1]):
            raise PaintError(f"alpha {alpha} is outside [{self.bounds[0]:g}, {self.bounds[1]:g}]")
        key = alpha_key(alpha)
        cached = self._evals.get(key)
        if cached is not None and (not grad or cached.derivative is not None):
            return cached
        metrics = self._measure(key, grad)  # before the reference: at alpha 0 one measurement serves both
        ref = self.reference()
        ev = Evaluation(
            alpha=key,
            value=self.objective.value(metrics, ref),
            derivative=self.objective.derivative(metrics, ref) if grad else None,
            feasible=self.objective.feasible(metrics, ref),
            metrics=metrics,
        )
        if cached is None:
            self.evaluations.append(ev)
        else:
            self.evaluations[self.evaluations.index(cached)] = ev
        self._evals[key] = ev
        return ev

    def __call__(self, alpha: float) -> float:
        return self.evaluate(float(alpha)).value

    def derivative(self, alpha: float) -> float:
        ev = self.evaluate(float(alpha), grad=True)
        assert ev.derivative is not None
        return ev.derivative

    def best(self) -> Evaluation:
        """Lowest value among evaluations; among feasible ones whenever one is feasible.

        Ties go to the smaller alpha (the one closer to the zero-shot model).
        """
        if not self.evaluations:
            raise PaintError("no evaluation was made; raise the search budget")
        pool = [e for e in self.evaluations if e.feasible] or self.evaluations
        return min(pool, key=lambda e: (e.value, e.alpha))

    def is_measured(self, alpha: float) -> bool:
        return alpha_key(alpha) in self._metrics

    def room(self, fallback: int) -> int:
        """Model evaluations left: under the evaluator's budget, or ``fallback`` in all if it has none."""
        total = self.budget if self.budget is not None else fallback
        return total - self.n_model_evals


def function_evaluator(
    f: Callable[[float], float], df: Callable[[float], float] | None = None, budget: int | None = None
) -> Evaluator:
    """An evaluator over a plain function of alpha (synthetic curves, tests, benchmarks).

    Example:
        >>> from paint import function_evaluator
        >>> ev = function_evaluator(lambda a: (a - 0.5) ** 2, budget=3)
        >>> ev(0.0), ev(0.5), ev.n_model_evals
        (0.25, 0.0, 2)
    """

    def measure(alpha: float, grad: bool) -> TaskMetrics:
        m = {"loss": float(f(alpha))}
        if grad:
            if df is None:
                raise PaintError("this curve has no derivative")
            m["dloss"] = float(df(alpha))
        return {"curve": m}

    # The reference is unused by CurveValue; give an empty one so it costs no evaluation.
    return Evaluator(measure, CurveValue(), budget, reference={})

"""Choosing the mixing coefficient alpha: objectives and search strategies behind one interface.

A *measure* is the expensive part: alpha -> per-task validation metrics of the model
``theta_alpha`` (``{"task": {"accuracy", "loss", "dloss"?}}``). An :class:`Objective` turns the
metrics at alpha (and at the reference, the zero-shot model) into one number to minimise. The
:class:`Evaluator` sits between them: it evaluates each distinct alpha once, enforces the
budget, and records every evaluation in order, so every strategy is charged the same way and
strategies that share an evaluator (or a results file under the measure) share work.

Objectives (validation splits only):
  - ``mean_accuracy``: minus the mean of (mean patching accuracy, mean support accuracy), the
    PAINT paper's "average of the patching and supported tasks".
  - ``constrained``: minus the mean patching accuracy, subject to every support task staying
    within ``epsilon`` points of its zero-shot accuracy. An infeasible alpha scores
    ``1 + total violation`` (worse than every feasible alpha, and sloped towards feasibility).
  - ``loss_sum``: L_patch(alpha) / L_patch(0) + L_supp(alpha) / L_supp(0), the smooth proxy of
    the quasi-convexity study (see REFERENCE.md); the only one with a derivative.

Strategies (registry :data:`STRATEGIES`, selected by :class:`SearchConfig.strategy`):
  - ``grid``: the paper's 11 points 0, 0.1, ..., 1 or any list.
  - ``bounded``: scipy's bounded Brent / golden-section scalar minimiser.
  - ``quasiconvex``: bracket the minimum, fit a polynomial of degree <= 5 to the evaluations in
    the bracket (numpy.polynomial) and evaluate at the real root of its derivative.
  - ``derivative``: scipy's Brent root finder (bisection + secant) on the sign of the exact
    derivative along the line, dL/dalpha = grad L(theta_alpha) . (theta_ft - theta_zs).
  - ``boundary`` (``constrained`` only): bisection for the largest alpha that keeps every support
    task within epsilon, where the constrained optimum sits when support accuracy falls with alpha.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field, field_validator, model_validator

from paint.config import StrictModel
from paint.errors import PaintError

PAPER_GRID: tuple[float, ...] = tuple(round(i / 10, 10) for i in range(11))

TaskMetrics = dict[str, dict[str, float]]  # task name -> {"accuracy", "loss", "dloss"?, ...}
Measure = Callable[[float, bool], TaskMetrics]  # (alpha, need_derivative) -> metrics


def alpha_key(alpha: float) -> float:
    """Cache key of an alpha: equal up to 1e-10, so 0.1 + 0.2 and 0.3 are one evaluation."""
    return round(float(alpha), 10)


# ----------------------------------------------------------------------------- objectives


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
        raise PaintError(f"no {key} measured for task {missing[0]!r}; the objective needs every patching and support task")
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
        raise PaintError("objective 'mean_accuracy' has no derivative; use objective 'loss_sum' with strategy 'derivative'")

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
    constraint: str = "each"
    name: str = "constrained"
    differentiable: bool = False

    def violation(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        """Total shortfall (fraction) of support accuracy below zero-shot minus epsilon."""
        eps = self.epsilon / 100.0
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

    def feasible(self, metrics: TaskMetrics, reference: TaskMetrics) -> bool:
        # A tiny slack so that floating-point noise in "acc0 - eps" never flips alpha = 0.
        return self.violation(metrics, reference) <= 1e-12

    def value(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        if self.feasible(metrics, reference):
            return -_mean(metrics, self.groups.patch, "accuracy")  # in [-1, 0]
        return 1.0 + self.violation(metrics, reference)  # > every feasible value

    def derivative(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        raise PaintError("objective 'constrained' has no derivative; use objective 'loss_sum' with strategy 'derivative'")


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
    name: str, patch: Sequence[str], support: Sequence[str] = (), epsilon: float = 1.0, constraint: str = "each"
) -> Objective:
    """Build a named objective over the given patching and support task names."""
    groups = TaskGroups(tuple(patch), tuple(support))
    if name == "mean_accuracy":
        return MeanAccuracy(groups)
    if name == "constrained":
        if constraint not in ("each", "mean"):
            raise PaintError(f"unknown constraint {constraint!r}; use 'each' (every support task) or 'mean' (their mean)")
        return Constrained(groups, epsilon, constraint)
    if name == "loss_sum":
        return LossSum(groups)
    raise PaintError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")


# ----------------------------------------------------------------------------- evaluator


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
    """

    def __init__(
        self,
        measure: Measure,
        objective: Objective,
        budget: int | None = None,
        reference: TaskMetrics | None = None,
    ) -> None:
        self.measure = measure
        self.objective = objective
        self.budget = budget
        self._reference = reference
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
        if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
            raise PaintError(f"alpha {alpha} is outside [0, 1]")
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
    """An evaluator over a plain function of alpha (synthetic curves, tests, benchmarks)."""

    def measure(alpha: float, grad: bool) -> TaskMetrics:
        m = {"loss": float(f(alpha))}
        if grad:
            if df is None:
                raise PaintError("this curve has no derivative")
            m["dloss"] = float(df(alpha))
        return {"curve": m}

    # The reference is unused by CurveValue; give an empty one so it costs no evaluation.
    return Evaluator(measure, CurveValue(), budget, reference={})


# ----------------------------------------------------------------------------- config, result


class SearchConfig(StrictModel):
    """How alpha is chosen. ``epsilon`` is in accuracy points (1.0 = one point)."""

    strategy: Literal["grid", "bounded", "quasiconvex", "derivative", "boundary"] = "grid"
    objective: Literal["mean_accuracy", "constrained", "loss_sum"] = "constrained"
    budget: int = Field(11, ge=1, description="most model evaluations, the zero-shot reference included")
    epsilon: float = Field(1.0, ge=0.0)
    constraint: Literal["each", "mean"] = Field("each", description="constrained: bound every support task, or their mean")
    grid: list[float] | None = Field(None, description="alphas for strategy grid (default: 0, 0.1, ..., 1)")
    xtol: float = Field(1e-3, gt=0.0, description="stop when alpha is known to within this")

    @field_validator("grid")
    @classmethod
    def _grid_in_range(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            if not v:
                raise ValueError("grid is empty")
            bad = [a for a in v if not 0.0 <= a <= 1.0]
            if bad:
                raise ValueError(f"grid alpha {bad[0]} is outside [0, 1]")
        return v

    @model_validator(mode="after")
    def _derivative_needs_loss(self):
        if self.strategy == "derivative" and self.objective != "loss_sum":
            raise ValueError("strategy 'derivative' needs objective 'loss_sum' (accuracy has no derivative)")
        if self.strategy == "boundary" and self.objective != "constrained":
            raise ValueError("strategy 'boundary' needs objective 'constrained' (it bisects the support constraint)")
        if self.strategy != "grid" and self.budget < 3:
            raise ValueError(f"strategy {self.strategy!r} needs a budget of at least 3 evaluations")
        return self

    def alphas(self) -> list[float]:
        return list(self.grid) if self.grid is not None else list(PAPER_GRID)


@dataclass(frozen=True)
class SearchResult:
    """What a strategy found: the chosen alpha, its value, every evaluation in order."""

    strategy: str
    objective: str
    alpha: float
    value: float
    feasible: bool
    evaluations: tuple[Evaluation, ...]
    n_model_evals: int
    stopped: str  # "done" | "converged" | "budget"

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "objective": self.objective,
            "alpha": self.alpha,
            "value": self.value,
            "feasible": self.feasible,
            "n_model_evals": self.n_model_evals,
            "stopped": self.stopped,
            "evaluations": [e.to_dict() for e in self.evaluations],
        }


def _result(name: str, ev: Evaluator, stopped: str) -> SearchResult:
    best = ev.best()
    return SearchResult(
        strategy=name,
        objective=ev.objective.name,
        alpha=best.alpha,
        value=best.value,
        feasible=best.feasible,
        evaluations=tuple(ev.evaluations),
        n_model_evals=ev.n_model_evals,
        stopped=stopped,
    )


# ----------------------------------------------------------------------------- strategies


def search_grid(ev: Evaluator, cfg: SearchConfig) -> SearchResult:
    """Evaluate every alpha of the grid in order (the paper's 11 points by default)."""
    try:
        for a in cfg.alphas():
            ev(a)
    except BudgetExhausted:
        return _result("grid", ev, "budget")
    return _result("grid", ev, "done")


def search_bounded(ev: Evaluator, cfg: SearchConfig) -> SearchResult:
    """scipy's bounded scalar minimiser (Brent's method with golden-section steps) on [0, 1].

    The zero-shot reference (alpha = 0) counts against the budget and is a candidate too.
    """
    from scipy.optimize import minimize_scalar

    stopped = "converged"
    try:
        ev.reference()
        if ev.is_measured(0.0):
            ev(0.0)  # already paid for as the reference, so a free candidate
        minimize_scalar(ev, bounds=(0.0, 1.0), method="bounded", options={"xatol": cfg.xtol, "maxiter": cfg.budget})
    except BudgetExhausted:
        stopped = "budget"
    return _result("bounded", ev, stopped)


def bracket_of(evals: Sequence[Evaluation]) -> tuple[float, float]:
    """Under quasi-convexity the minimiser lies between the neighbours of the lowest evaluations.

    Ties (plateaus) widen the bracket to cover every tied point.
    """
    pts = sorted(evals, key=lambda e: e.alpha)
    vmin = min(e.value for e in pts)
    idx = [i for i, e in enumerate(pts) if e.value <= vmin]
    lo = pts[max(0, idx[0] - 1)].alpha
    hi = pts[min(len(pts) - 1, idx[-1] + 1)].alpha
    return lo, hi


def polynomial_minimum(xs: Sequence[float], ys: Sequence[float], lo: float, hi: float, degree: int = 5) -> float:
    """Argmin over [lo, hi] of the least-squares polynomial of degree min(degree, n - 1).

    Candidates are the real roots of the derivative inside the bracket and the bracket's ends;
    the one where the polynomial is lowest wins.
    """
    from numpy.polynomial import Polynomial

    deg = max(1, min(degree, len(xs) - 1))
    poly = Polynomial.fit(np.asarray(xs, float), np.asarray(ys, float), deg, domain=[lo, hi])
    roots = poly.deriv().roots()
    cands = [float(r.real) for r in np.atleast_1d(roots) if abs(r.imag) < 1e-9 and lo <= r.real <= hi]
    cands += [lo, hi]
    return min(cands, key=lambda x: float(poly(x)))


def search_quasiconvex(ev: Evaluator, cfg: SearchConfig, degree: int = 5) -> SearchResult:
    """Bracket, fill the bracket, fit a polynomial, evaluate at its minimum; repeat with the budget.

    1. evaluate 0, 1/2, 1: under quasi-convexity the minimiser lies in the bracket formed by the
       neighbours of the lowest point;
    2. add evenly spaced points inside the bracket until it holds ``degree + 1`` evaluations
       (keeping one evaluation in hand), fit the polynomial to the evaluations in the bracket and
       evaluate at the real root of its derivative;
    3. with budget left, re-bracket around the new lowest point and repeat; when the fitted
       minimum is an alpha already evaluated, split the bracket's widest gap instead. Stops when
       the budget is spent or the bracket is narrower than ``xtol``.
    """
    stopped = "converged"
    try:
        for a in (0.0, 0.5, 1.0):
            ev(a)
        while True:
            room = ev.room(cfg.budget)
            if room <= 0:
                stopped = "budget"
                break
            lo, hi = bracket_of(ev.evaluations)
            if hi - lo <= cfg.xtol:
                break
            inside = [e for e in ev.evaluations if lo <= e.alpha <= hi]
            n_fill = max(0, min(degree + 1 - len(inside), room - 1))
            if n_fill:
                for a in _fill_points(sorted(e.alpha for e in inside), n_fill):
                    ev(a)
                inside = [e for e in ev.evaluations if lo <= e.alpha <= hi]
            x = polynomial_minimum([e.alpha for e in inside], [e.value for e in inside], lo, hi, degree)
            if min(abs(x - e.alpha) for e in ev.evaluations) <= cfg.xtol / 2:
                # The fit points at an alpha already evaluated (a plateau, or a converged fit):
                # split the widest gap of the bracket instead, until the bracket is resolved.
                pts = sorted(e.alpha for e in inside)
                width, x = max((b - a, (a + b) / 2) for a, b in zip(pts, pts[1:], strict=False))
                if width <= cfg.xtol:
                    break
            ev(x)
    except BudgetExhausted:
        stopped = "budget"
    return _result("quasiconvex", ev, stopped)


def _fill_points(known: Sequence[float], n: int) -> list[float]:
    """``n`` new alphas that split the widest gaps between the sorted ``known`` alphas."""
    pts = list(known)
    new: list[float] = []
    for _ in range(n):
        gaps = [(pts[i + 1] - pts[i], i) for i in range(len(pts) - 1)]
        width, i = max(gaps)
        mid = pts[i] + width / 2
        pts.insert(i + 1, mid)
        new.append(mid)
    return new


def search_derivative(ev: Evaluator, cfg: SearchConfig) -> SearchResult:
    """Root of dL/dalpha by scipy's Brent root finder (bisection, secant, inverse quadratic).

    The sign of the exact derivative at the ends decides first: dL/dalpha(0) >= 0 means the
    minimum of a quasi-convex objective is at 0, dL/dalpha(1) <= 0 means it is at 1.
    """
    from scipy.optimize import brentq

    if not ev.objective.differentiable:
        raise PaintError(f"objective {ev.objective.name!r} has no derivative; use objective 'loss_sum' with strategy 'derivative'")
    stopped = "converged"
    try:
        d0 = ev.derivative(0.0)
        if d0 < 0:
            d1 = ev.derivative(1.0)
            if d1 > 0:
                brentq(ev.derivative, 0.0, 1.0, xtol=cfg.xtol, maxiter=max(1, cfg.budget))
    except BudgetExhausted:
        stopped = "budget"
    except RuntimeError:  # brentq's own iteration cap (cfg.budget) when the evaluator has no budget
        stopped = "budget"
    return _result("derivative", ev, stopped)


def search_boundary(ev: Evaluator, cfg: SearchConfig) -> SearchResult:
    """The largest feasible alpha, by bisection on the support constraint (``constrained`` only).

    Assumes support accuracy falls, and patching accuracy rises, as alpha grows, so the
    constrained optimum sits at the edge of the feasible set: evaluate 1 (done if feasible), then
    halve [last feasible, first infeasible] until it is narrower than ``xtol`` or the budget is
    spent. The answer is still the best feasible evaluation, so a noisy, non-monotone curve can
    cost accuracy but never feasibility.
    """
    if ev.objective.name != "constrained":
        raise PaintError(f"strategy 'boundary' needs objective 'constrained', not {ev.objective.name!r}")
    stopped = "converged"
    try:
        ev.evaluate(0.0)
        if not ev.evaluate(1.0).feasible:
            lo, hi = 0.0, 1.0
            while hi - lo > cfg.xtol:
                mid = (lo + hi) / 2
                if ev.evaluate(mid).feasible:
                    lo = mid
                else:
                    hi = mid
    except BudgetExhausted:
        stopped = "budget"
    return _result("boundary", ev, stopped)


def compatible(strategy: str, objective: Objective) -> bool:
    """Whether ``strategy`` can run on ``objective`` (derivative: differentiable; boundary: constrained)."""
    if strategy == "derivative":
        return objective.differentiable
    if strategy == "boundary":
        return objective.name == "constrained"
    return True


Strategy = Callable[[Evaluator, SearchConfig], SearchResult]

# name -> strategy; the one place a strategy is registered.
STRATEGIES: Mapping[str, Strategy] = {
    "grid": search_grid,  # PAINT (Ilharco et al. 2022): 11-point sweep
    "bounded": search_bounded,  # Brent 1973 via scipy.optimize.minimize_scalar(method="bounded")
    "quasiconvex": search_quasiconvex,  # bracket + 5th-order polynomial (REFERENCE.md, quasi-convexity)
    "derivative": search_derivative,  # exact line derivative, brentq on its sign
    "boundary": search_boundary,  # bisection on the support constraint (constrained rule only)
}


def run_search(ev: Evaluator, cfg: SearchConfig) -> SearchResult:
    """Run the strategy named in ``cfg`` on ``ev``."""
    try:
        strategy = STRATEGIES[cfg.strategy]
    except KeyError:
        raise PaintError(f"unknown search strategy {cfg.strategy!r}; choose one of: {', '.join(STRATEGIES)}") from None
    return strategy(ev, cfg)


def evaluator_for(cfg: SearchConfig, measure: Measure, patch: Sequence[str], support: Sequence[str] = (),
                  reference: TaskMetrics | None = None) -> Evaluator:
    """The evaluator a config asks for over a measure of the given tasks."""
    return Evaluator(measure, make_objective(cfg.objective, patch, support, cfg.epsilon, cfg.constraint), cfg.budget, reference)

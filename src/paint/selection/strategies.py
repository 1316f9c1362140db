"""Search strategies for one mixing coefficient, behind one registry (:data:`STRATEGIES`).

- ``grid``: the paper's 11 points 0, 0.1, ..., 1 or any list.
- ``bounded``: scipy's bounded Brent / golden-section scalar minimiser.
- ``quasiconvex``: bracket the minimum, fit a polynomial of degree <= 5 to the evaluations in
  the bracket (numpy.polynomial) and evaluate at the real root of its derivative.
- ``derivative``: scipy's Brent root finder (bisection + secant) on the sign of the exact
  derivative along the line, dL/dalpha = grad L(theta_alpha) . (theta_ft - theta_zs).
- ``boundary`` (``constrained`` only): bisection for the largest alpha that keeps the support
  tasks within epsilon, where the constrained optimum sits when support accuracy falls with alpha.
- ``surrogate``: a model of the curve from what every evaluation measures
  (:mod:`paint.selection.surrogate`): cubic steps on the exact derivative (``loss_sum``), the accuracy
  curve predicted from per-image margins (``constrained``, ``mean_accuracy``); without recorded
  margins, a power-law root of the support drop (``constrained``) or Brent's method (``mean_accuracy``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from paint.errors import PaintError
from paint.selection.config import SelectionConfig
from paint.selection.evaluator import BudgetExhausted, Evaluation, Evaluator
from paint.selection.objectives import Measure, TaskMetrics, make_objective
from paint.selection.surrogate import search as surrogate_search


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


def search_grid(ev: Evaluator, cfg: SelectionConfig) -> SearchResult:
    """Evaluate every alpha of the grid in order (the paper's 11 points by default)."""
    try:
        for a in cfg.points():
            ev(a)
    except BudgetExhausted:
        return _result("grid", ev, "budget")
    return _result("grid", ev, "done")


def search_bounded(ev: Evaluator, cfg: SelectionConfig) -> SearchResult:
    """scipy's bounded scalar minimiser (Brent's method with golden-section steps) on [0, 1].

    The zero-shot reference (alpha = 0) counts against the budget and is a candidate too.
    """
    from scipy.optimize import minimize_scalar

    stopped = "converged"
    try:
        ev.reference()
        if ev.is_measured(0.0):
            ev(0.0)  # already paid for as the reference, so a free candidate
        minimize_scalar(
            ev, bounds=(0.0, 1.0), method="bounded", options={"xatol": cfg.xtol, "maxiter": cfg.max_evals()}
        )
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


def search_quasiconvex(ev: Evaluator, cfg: SelectionConfig, degree: int = 5) -> SearchResult:
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
            room = ev.room(cfg.max_evals())
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


def search_derivative(ev: Evaluator, cfg: SelectionConfig) -> SearchResult:
    """Root of dL/dalpha by scipy's Brent root finder (bisection, secant, inverse quadratic).

    The sign of the exact derivative at the ends decides first: dL/dalpha(0) >= 0 means the
    minimum of a quasi-convex objective is at 0, dL/dalpha(1) <= 0 means it is at 1.
    """
    from scipy.optimize import brentq

    if not ev.objective.differentiable:
        raise PaintError(
            f"objective {ev.objective.name!r} has no derivative; use objective 'loss_sum' with strategy 'derivative'"
        )
    stopped = "converged"
    try:
        d0 = ev.derivative(0.0)
        if d0 < 0:
            d1 = ev.derivative(1.0)
            if d1 > 0:
                brentq(ev.derivative, 0.0, 1.0, xtol=cfg.xtol, maxiter=max(1, cfg.max_evals()))
    except BudgetExhausted:
        stopped = "budget"
    except RuntimeError:  # brentq's own iteration cap (cfg.max_evals()) when the evaluator has no budget
        stopped = "budget"
    return _result("derivative", ev, stopped)


def search_boundary(ev: Evaluator, cfg: SelectionConfig) -> SearchResult:
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


def search_surrogate(ev: Evaluator, cfg: SelectionConfig) -> SearchResult:
    """Model-based search on any objective (:mod:`paint.selection.surrogate`)."""
    stopped = "converged"
    try:
        surrogate_search(ev, cfg.xtol, cfg.max_evals())
    except BudgetExhausted:
        stopped = "budget"
    return _result("surrogate", ev, stopped)


SearchFn = Callable[[Evaluator, SelectionConfig], SearchResult]  # a strategy's search (named by config.Strategy)

# name -> strategy; the one place a strategy is registered.
STRATEGIES: Mapping[str, SearchFn] = {
    "grid": search_grid,  # PAINT (Ilharco et al. 2022): 11-point sweep
    "bounded": search_bounded,  # Brent 1973 via scipy.optimize.minimize_scalar(method="bounded")
    "quasiconvex": search_quasiconvex,  # bracket + 5th-order polynomial (REFERENCE.md, quasi-convexity)
    "derivative": search_derivative,  # exact line derivative, brentq on its sign
    "boundary": search_boundary,  # bisection on the support constraint (constrained rule only)
    "surrogate": search_surrogate,  # model-based: cubic on the derivative, per-image margins, power law, Brent
}
# Per-block strategies (one alpha per block of the tower: "lines", LiNeS 2410.17146; "blockwise",
# layer-wise AdaMerging 2310.02575) take a vector evaluator: see paint.selection.blockwise.


def run_search(ev: Evaluator, cfg: SelectionConfig) -> SearchResult:
    """Run the strategy named in ``cfg`` on ``ev``.

    Example:
        >>> from paint import SelectionConfig, function_evaluator, run_search
        >>> cfg = SelectionConfig(strategy="bounded", objective="loss_sum", budget=8)
        >>> result = run_search(function_evaluator(lambda a: (a - 0.3) ** 2, budget=8), cfg)
        >>> round(result.alpha, 2), result.n_model_evals <= 8
        (0.3, True)
    """
    if cfg.strategy in ("lines", "blockwise") or cfg.objective == "entropy":
        raise PaintError(
            f"strategy {cfg.strategy!r} with objective {cfg.objective!r} chooses per-block coefficients: "
            "run it with paint.selection.blockwise (the patch operation does)"
        )
    try:
        strategy = STRATEGIES[cfg.strategy]
    except KeyError:
        raise PaintError(f"unknown search strategy {cfg.strategy!r}; choose one of: {', '.join(STRATEGIES)}") from None
    return strategy(ev, cfg)


def evaluator_for(
    cfg: SelectionConfig,
    measure: Measure,
    patch: Sequence[str],
    support: Sequence[str] = (),
    reference: TaskMetrics | None = None,
) -> Evaluator:
    """The evaluator a config asks for over a measure of the given tasks.

    Example:
        >>> from paint import SelectionConfig, evaluator_for, run_search
        >>> def measure(alpha, grad):  # alpha -> validation metrics per task (here a made-up line)
        ...     return {"p": {"accuracy": 0.3 + 0.6 * alpha}, "s": {"accuracy": 0.9 - 0.4 * alpha}}
        >>> cfg = SelectionConfig(strategy="boundary", epsilon=5.0)
        >>> run_search(evaluator_for(cfg, measure, ["p"], ["s"]), cfg).alpha  # largest alpha within 5 points
        0.125
    """
    return Evaluator(
        measure,
        make_objective(cfg.objective, patch, support, cfg.epsilon, cfg.constraint, cfg.bound_confidence),
        cfg.max_evals(),
        reference,
        bounds=None if cfg.allow_extrapolation else (0.0, 1.0),
    )

"""Model-based search along the line (``strategy: surrogate``): every evaluation feeds a model of the curve.

One strategy for every objective; what each evaluation measures decides the model:

- differentiable objectives (``loss_sum``): value and exact derivative at both ends of a bracket
  define a cubic (Hermite) whose minimiser is the next point, the classic line-search
  interpolation (Nocedal & Wright 2006, sec. 3.5), safeguarded to stay inside the bracket.
- accuracy objectives (``constrained``, ``mean_accuracy``) whose evaluations record per-image
  margins: each image's margin interpolated along the line predicts every task's accuracy at every
  alpha of a fine grid, hence the objective's whole curve; the search evaluates the predicted
  optimum until it is confirmed (:mod:`paint.selection.margin_search`). Without margins (results
  written before they were kept), the two models below:
- ``constrained``: the optimum sits where the support margin crosses zero (patching accuracy
  rises with alpha). The support drop D(alpha) = epsilon - margin is modelled as a power law
  c * alpha^p through the last feasible and the first infeasible point (regula falsi in log-log
  coordinates); with no feasible point of positive drop yet, two infeasible points give p, or
  p = 2 after the first two evaluations: a drop that starts flat, because the fine-tuning
  direction is nearly orthogonal to the support loss's gradient at alpha = 0. The law aims at the
  bound plus half an image (accuracy moves in whole images), and its root keeps a share of the
  bracket on each side, so a flat stretch never stalls it.
- other objectives (``mean_accuracy``): Brent's method (:func:`peak_search`): no model of the
  groups' accuracies did better on the measured curves.

Every function here drives an :class:`~paint.selection.evaluator.Evaluator` and lets
:class:`~paint.selection.evaluator.BudgetExhausted` through; the strategy wrapper in
:mod:`paint.selection.strategies` turns that into ``stopped: budget``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from paint.selection.evaluator import Evaluation, Evaluator
from paint.selection.margin_search import margin_search
from paint.selection.objectives import Constrained, TaskMetrics

PRIOR_POWER = 2.0  # the support drop's exponent before the data give one (a flat start: quadratic)
GUARD = 0.01  # the share of the bracket a model step keeps from either end
GUARD_REPEAT = 0.25  # ... after three steps that moved the same end (the model is biased to one side)


def cubic_minimiser(a: float, fa: float, da: float, b: float, fb: float, db: float) -> float:
    """Minimiser in [a, b] of the cubic Hermite interpolant of (f, f') at a and b.

    With da < 0 < db the cubic has a local minimum inside; the formula is the stable one of
    Nocedal & Wright (3.59). Falls back to the secant root of f' when the cubic degenerates.
    """
    d1 = da + db - 3 * (fa - fb) / (a - b)
    disc = d1 * d1 - da * db
    if disc >= 0:
        d2 = math.copysign(math.sqrt(disc), b - a)
        denom = db - da + 2 * d2
        if denom != 0:
            x = b - (b - a) * (db + d2 - d1) / denom
            if min(a, b) <= x <= max(a, b):
                return x
    return a - da * (b - a) / (db - da) if db != da else (a + b) / 2


def guarded(x: float, lo: float, hi: float, share: float = GUARD) -> float:
    """``x`` moved inside [lo + share * w, hi - share * w], w = hi - lo (NaN: the midpoint)."""
    if not math.isfinite(x):
        return (lo + hi) / 2
    w = hi - lo
    return min(max(x, lo + share * w), hi - share * w)


def line_search(ev: Evaluator, xtol: float) -> None:
    """Minimise a differentiable objective: bracket by the derivative's sign, then cubic steps.

    dL/dalpha(0) >= 0 puts a quasi-convex minimum at 0, dL/dalpha(1) <= 0 at 1.
    """
    lo = ev.evaluate(0.0, grad=True)
    if _slope(lo) >= 0:
        return
    hi = ev.evaluate(1.0, grad=True)
    if _slope(hi) <= 0:
        return
    while hi.alpha - lo.alpha > xtol:
        x = cubic_minimiser(lo.alpha, lo.value, _slope(lo), hi.alpha, hi.value, _slope(hi))
        x = guarded(x, lo.alpha, hi.alpha, 0.01)
        if min(abs(x - lo.alpha), abs(x - hi.alpha)) <= xtol / 2:
            return
        e = ev.evaluate(x, grad=True)
        if _slope(e) == 0:
            return
        if _slope(e) < 0:
            lo = e
        else:
            hi = e


def _slope(e: Evaluation) -> float:
    assert e.derivative is not None
    return e.derivative


def edge_root(points: Sequence[tuple[float, float]], level: float, lo: float, hi: float) -> float:
    """Where a power law D = c * alpha^p through the drops ``points`` (alpha, D) reaches ``level``.

    The law goes through the last point at or below the level (if its drop is positive) and the
    first above it; with no positive drop below, through the first above and the next one above it
    (its exponent), or with ``PRIOR_POWER`` when only one is known.
    """
    pts = sorted((a, d) for a, d in points if a > 0)
    below = [(a, d) for a, d in pts if lo >= a and d > 0 and d <= level]
    above = [(a, d) for a, d in pts if a >= hi and d > level]
    if not above:
        return (lo + hi) / 2
    a1, d1 = above[0]
    if below:
        a0, d0 = below[-1]
    elif len(above) > 1 and above[1][1] > d1:
        a0, d0 = above[1]
    else:
        return a1 * (level / d1) ** (1 / PRIOR_POWER)
    if a0 == a1 or d0 == d1 or d0 <= 0:
        return (lo + hi) / 2
    p = math.log(d1 / d0) / math.log(a1 / a0)
    if not p > 0:
        return (lo + hi) / 2
    return a1 * (level / d1) ** (1 / p)


def image_steps(obj: Constrained, metrics: TaskMetrics) -> list[float]:
    """Per bounded group, how much one image moves its accuracy (0 where ``n`` is not recorded)."""
    groups = [obj.groups.support] if obj.constraint == "mean" else [(t,) for t in obj.groups.support]
    out = []
    for g in groups:
        ns = [metrics.get(t, {}).get("n") for t in g]
        out.append(1.0 / (len(g) * min(ns)) if ns and all(ns) else 0.0)
    return out


def edge_search(ev: Evaluator, xtol: float) -> None:
    """The largest feasible alpha of a ``constrained`` objective, by modelled root finding on the margin.

    Evaluates 0 (the reference) and 1 (done if feasible); then keeps [lo, hi] with lo feasible and
    hi not, and evaluates the power-law root of the support drop, guarded to the bracket, until it
    is narrower than ``xtol``. Each bounded group (the support mean, or each support task) has its
    own law and the nearest root wins, so the binding task may change along the line. Infeasible
    alphas above the edge still teach the laws their exponents.

    Accuracy moves in whole images, so a measured drop stays at the bound for a while after the smooth
    trend has passed it: the law aims at the bound plus half an image, where the rounded count
    crosses on average.
    """
    obj = ev.objective
    assert isinstance(obj, Constrained)
    ref = ev.reference()
    e0 = ev.evaluate(0.0)
    e1 = ev.evaluate(1.0)
    if e1.feasible or not e0.feasible:
        return
    levels = obj.margins(e0.metrics, ref)  # epsilon per group, or less when alpha 0 is measured apart
    steps = image_steps(obj, e0.metrics) if obj.confidence is None else [0.0] * len(levels)
    lo, hi = 0.0, 1.0
    drops: dict[float, list[float]] = {}

    def note(e: Evaluation) -> None:
        drops[e.alpha] = [lv - m for lv, m in zip(levels, obj.margins(e.metrics, ref), strict=True)]

    note(e0)
    note(e1)
    sides: list[bool] = []  # which end each model step moved (True: lo)
    while hi - lo > xtol:
        roots = [
            edge_root([(a, d[g]) for a, d in drops.items()], levels[g] + steps[g] / 2, lo, hi)
            for g in range(len(levels))
            if any(a >= hi and d[g] > levels[g] for a, d in drops.items())
        ]
        share = GUARD_REPEAT if len(sides) >= 3 and len(set(sides[-3:])) == 1 else GUARD  # biased to one side
        x = guarded(min(roots, default=(lo + hi) / 2), lo, hi, share)
        e = ev.evaluate(x)
        note(e)
        sides.append(e.feasible)
        if e.feasible:
            lo = e.alpha
        else:
            hi = e.alpha


def peak_search(ev: Evaluator, xtol: float, budget: int) -> None:
    """Minimise a quasi-convex objective without a derivative (``mean_accuracy``): Brent's method.

    scipy's bounded Brent (golden section + parabolic steps) on [0, 1] after the reference. Models of
    the two groups' accuracies (shape-preserving interpolants of patching accuracy, in accuracy and in
    log error, with the support drop) were tried and did worse: the patching accuracy saturates at a
    knee that three points do not show, and the models overshot it (docs/choosing_alpha.md).
    """
    from scipy.optimize import minimize_scalar  # scipy is a dependency; imported where used, as in strategies

    ev.evaluate(0.0)  # the reference, and a candidate
    minimize_scalar(ev, bounds=(0.0, 1.0), method="bounded", options={"xatol": xtol, "maxiter": budget})


def search(ev: Evaluator, xtol: float, budget: int) -> None:
    """Dispatch on what the objective and the evaluations offer: a derivative, per-image margins
    (:func:`~paint.selection.margin_search.margin_search`), a support margin, or values only."""
    if ev.objective.differentiable:
        line_search(ev, xtol)
    elif margin_search(ev, xtol):
        return
    elif isinstance(ev.objective, Constrained) and ev.objective.groups.support:
        edge_search(ev, xtol)
    else:
        peak_search(ev, xtol, budget)


__all__ = ["cubic_minimiser", "edge_root", "edge_search", "guarded", "line_search", "peak_search", "search"]

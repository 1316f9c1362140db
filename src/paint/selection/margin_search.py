"""Search on accuracy objectives by predicting every image along the line from its margins.

Each evaluation records, per validation image, its margin (true-class logit minus the best other
logit; :mod:`paint.selection.margins`). Interpolated per image across the evaluated alphas, the
margins predict which images each task gets right at every alpha of a fine grid, hence the whole
objective curve: the patching and support accuracies, the support bound of every task or of their
mean (a feasible set in several pieces included), the objective's own value. The search evaluates
where the prediction is best, in the middle of the stretch where it is best (the prediction is
least likely to be off there by one image); each evaluation makes the prediction exact at that
alpha and sharper around it. It stops when no alpha of the grid is predicted to beat the best
evaluated one and the last evaluation confirmed its prediction (measured within 0.1% of what was
predicted); after a prediction that did not hold, it first evaluates the predicted best once more.
The answer is always an evaluated alpha, chosen by the objective's own rule
(:meth:`~paint.selection.evaluator.Evaluator.best`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paint.selection.evaluator import Evaluation, Evaluator
from paint.selection.margins import predict_margins, task_margins
from paint.selection.objectives import Constrained, MeanAccuracy, TaskMetrics
from paint.stats import encode_correct

GRID_STEP = 0.0025  # the prediction's grid on [0, 1] (401 alphas), finer than the 0.01 a sweep resolves
CHUNK = 4096  # images per block of the prediction (bounds its memory on large validation splits)
CONFIRM = 1e-3  # a prediction holds where the measured objective is within 0.1% of it


def objective_tasks(ev: Evaluator) -> tuple[str, ...] | None:
    """The tasks whose accuracies make the objective, or None when it is not built from accuracies."""
    obj = ev.objective
    if isinstance(obj, MeanAccuracy | Constrained):
        return (*obj.groups.patch, *obj.groups.support)
    return None


def has_margins(evaluations: Sequence[Evaluation], tasks: Sequence[str]) -> bool:
    """Whether every evaluation recorded every task's per-image margins (older records did not)."""
    return all(task_margins(e.metrics, t) is not None for e in evaluations for t in tasks)


def predicted_correct(alphas: Sequence[float], margins: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(len(grid), N) booleans: which images the interpolated margins (K, N) classify correctly."""
    n = margins.shape[1]
    out = np.zeros((len(grid), n), dtype=bool)
    for i in range(0, n, CHUNK):
        out[:, i : i + CHUNK] = predict_margins(alphas, margins[:, i : i + CHUNK], grid) > 0
    return out


def predicted_metrics(
    evaluations: Sequence[Evaluation], tasks: Sequence[str], grid: np.ndarray, with_correct: bool
) -> list[TaskMetrics]:
    """Per alpha of ``grid``, every task's predicted accuracy and count (and, if asked, per-image correctness)."""
    alphas = [e.alpha for e in evaluations]
    out: list[TaskMetrics] = [{} for _ in grid]
    for t in tasks:
        margins = np.stack([task_margins(e.metrics, t) for e in evaluations])  # (K, N)
        ok = predicted_correct(alphas, margins, grid)
        n = ok.shape[1]
        acc = ok.sum(axis=1) / max(1, n)
        for g, m in enumerate(out):
            m[t] = {"accuracy": float(acc[g]), "n": n}
            if with_correct:
                m[t]["correct"] = encode_correct(ok[g])
    return out


def predicted_values(ev: Evaluator, tasks: Sequence[str], grid: np.ndarray) -> np.ndarray:
    """The objective's predicted value at every alpha of ``grid`` (infeasible ones above every feasible one)."""
    ref = ev.reference()
    with_correct = isinstance(ev.objective, Constrained) and ev.objective.confidence is not None
    preds = predicted_metrics(ev.evaluations, tasks, grid, with_correct)
    return np.array([ev.objective.value(m, ref) for m in preds])


def longest_run(mask: np.ndarray) -> tuple[int, int]:
    """First and last index of the longest run of True in ``mask`` (the first of equal ones)."""
    best, start = (0, -1), None
    for i, v in enumerate([*mask.tolist(), False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - 1 - start > best[1] - best[0]:
                best = (start, i - 1)
            start = None
    return best


def next_alpha(
    values: np.ndarray, grid: np.ndarray, evaluated: Sequence[float], best: float, xtol: float, improve: bool = True
) -> float | None:
    """Where to evaluate next: the middle of the longest stretch of the predicted optimum, or None to stop.

    The optimum is taken over the alphas of ``grid`` farther than ``xtol`` from every evaluated one.
    None when there is none, or (with ``improve``) when none is predicted to beat ``best``, the best
    evaluated value; without ``improve`` the predicted best is returned anyway (to check the prediction).
    """
    done = np.asarray(evaluated, dtype=np.float64)
    free = np.abs(grid[:, None] - done[None, :]).min(axis=1) >= xtol
    if not free.any():
        return None
    low = float(values[free].min())
    if improve and not low < best - 1e-12:
        return None
    lo, hi = longest_run(free & (values <= low + 1e-12))
    return float(grid[(lo + hi) // 2])


def margin_search(ev: Evaluator, xtol: float, step: float = GRID_STEP) -> bool:
    """Minimise an accuracy objective by predicting it from interpolated per-image margins.

    Evaluates 0 and 1, then the predicted optimum until it is confirmed (see the module's doc).
    Returns False, having evaluated at most alpha 0 and 1, when the objective is not made of
    accuracies or the records carry no margins (written before margins were kept, or a measure
    that does not record them): the caller then searches another way.
    """
    tasks = objective_tasks(ev)
    if tasks is None:
        return False
    for a in (0.0, 1.0):
        ev.evaluate(a)
        if not has_margins(ev.evaluations, tasks):
            return False
    grid = np.round(np.linspace(0.0, 1.0, int(round(1 / step)) + 1), 10)
    held = False  # whether the last evaluation measured what the prediction said it would
    while True:
        values = predicted_values(ev, tasks, grid)
        done = [e.alpha for e in ev.evaluations]
        x = next_alpha(values, grid, done, ev.best().value, xtol)
        if x is None and not held:  # the prediction says stop, but it was just wrong: check its best once more
            x = next_alpha(values, grid, done, ev.best().value, xtol, improve=False)
        if x is None:
            return True
        expected = float(values[int(np.argmin(np.abs(grid - x)))])
        e = ev.evaluate(x)
        if not has_margins(ev.evaluations, tasks):
            return False
        held = abs(e.value - expected) <= CONFIRM * abs(e.value)

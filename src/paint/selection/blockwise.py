"""Choosing one coefficient per block (and per task): the ``lines`` and ``blockwise`` strategies, the ``entropy`` objective.

A coefficient *vector* x has one entry per (task vector, block) of the image tower
(:mod:`paint.weights.blocks`); the caller's measure turns x into per-task validation metrics,
exactly as a scalar measure turns alpha into them, so every objective of
:mod:`paint.selection.objectives` applies unchanged.

- ``lines`` (LiNeS, 2410.17146): alpha_l = a + b * depth_l, written with the alphas of the first
  and last block (a, a + b), searched on the 2-D grid of ``selection.alphas`` (the diagonal
  first: it is the single-alpha grid), then refined by a pattern search around the best point.
- ``blockwise`` (layer-wise AdaMerging, 2310.02575): start from the best single alpha of the
  grid, then projected Adam on x in [0, 1] with the gradient of ``patch term + lambda * support
  term`` from the caller's oracle (the patch term is cross-entropy, or prediction entropy for the
  ``entropy`` objective; the support term is KL to the zero-shot predictions or cross-entropy).
  lambda is the multiplier of "support term <= its value at the start" (dual ascent); every
  ``eval_every`` steps the iterate is measured like any other point, and an infeasible one
  tightens that budget.
- ``entropy`` objective: minimise the mean prediction entropy on the patching tasks' images,
  which needs no patching labels; the support tasks keep the configured constraint.

The answer is always the best *measured* point, feasible ones first, so the returned vector
never violates the support constraint when a feasible one was seen (x = 0, the zero-shot
model, is measured first and is always feasible).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from paint.errors import PaintError
from paint.selection.config import SelectionConfig
from paint.selection.evaluator import BudgetExhausted, alpha_key
from paint.selection.objectives import Constrained, Objective, TaskGroups, TaskMetrics, _mean, make_objective

Vector = tuple[float, ...]
VectorMeasure = Callable[[Vector], TaskMetrics]  # coefficients -> per-task validation metrics


# ----------------------------------------------------------------------------- the entropy objective


@dataclass(frozen=True)
class Entropy:
    """Mean prediction entropy (nats) on the patching tasks, subject to the support constraint.

    AdaMerging's label-free surrogate: only the metric ``entropy`` of the patching tasks is read,
    never their accuracy or loss, so their labels may be unknown. Support tasks keep the
    constrained objective's bound (``epsilon`` points of accuracy, each task or their mean);
    with no support task every point is feasible.
    """

    groups: TaskGroups
    epsilon: float = 1.0
    constraint: str = "mean"
    name: str = "entropy"
    differentiable: bool = False

    def _bound(self) -> Constrained:
        return Constrained(self.groups, self.epsilon, self.constraint)

    def feasible(self, metrics: TaskMetrics, reference: TaskMetrics) -> bool:
        return self._bound().feasible(metrics, reference)

    def value(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        h = _mean(metrics, self.groups.patch, "entropy")
        if self.feasible(metrics, reference):
            return h
        return 1e3 + self._bound().violation(metrics, reference)  # worse than every feasible value

    def derivative(self, metrics: TaskMetrics, reference: TaskMetrics) -> float:
        raise PaintError("objective 'entropy' has no line derivative; use strategy 'blockwise' for gradients")


def block_objective(cfg: SelectionConfig, patch: Sequence[str], support: Sequence[str]) -> Objective:
    """The objective ``cfg`` names, ``entropy`` included."""
    if cfg.objective == "entropy":
        return Entropy(TaskGroups(tuple(patch), tuple(support)), cfg.epsilon, cfg.constraint)
    return make_objective(cfg.objective, patch, support, cfg.epsilon, cfg.constraint)


# ----------------------------------------------------------------------------- the vector evaluator


def vector_key(x: Sequence[float]) -> Vector:
    """Cache key of a coefficient vector (each entry equal up to 1e-10)."""
    return tuple(alpha_key(float(a)) for a in x)


@dataclass(frozen=True)
class VectorEvaluation:
    """One measured coefficient vector: value, feasibility, metrics, and what proposed it."""

    alphas: Vector
    value: float
    feasible: bool
    metrics: TaskMetrics = field(default_factory=dict)
    source: str = ""  # "grid", "lines", "refine", "step 10", ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VectorEvaluator:
    """Counting, caching objective over coefficient vectors (the vector twin of :class:`Evaluator`).

    Args:
        measure: coefficients -> per-task metrics; the expensive call.
        objective: how metrics become a value to minimise.
        size: entries per vector.
        budget: most measurements (the zero-shot reference included); None = unlimited.
        reference: zero-shot metrics, when they do not come from x = 0.
    """

    def __init__(
        self,
        measure: VectorMeasure,
        objective: Objective,
        size: int,
        budget: int | None = None,
        reference: TaskMetrics | None = None,
    ) -> None:
        self.measure = measure
        self.objective = objective
        self.size = size
        self.budget = budget
        self._reference = reference
        self._metrics: dict[Vector, TaskMetrics] = {}
        self._evals: dict[Vector, VectorEvaluation] = {}
        self.evaluations: list[VectorEvaluation] = []
        self.n_model_evals = 0

    def _measure(self, key: Vector) -> TaskMetrics:
        if key not in self._metrics:
            if self.budget is not None and self.n_model_evals >= self.budget:
                raise BudgetExhausted(f"budget of {self.budget} model evaluations used")
            self._metrics[key] = self.measure(key)
            self.n_model_evals += 1
        return self._metrics[key]

    def reference(self) -> TaskMetrics:
        if self._reference is None:
            self._reference = self._measure(vector_key([0.0] * self.size))
        return self._reference

    def evaluate(self, x: Sequence[float], source: str = "") -> VectorEvaluation:
        """The evaluation of ``x`` (cached); entries must be finite and in [0, 1]."""
        if len(x) != self.size:
            raise PaintError(f"{len(x)} coefficients given, {self.size} expected")
        if any(not (0.0 <= float(a) <= 1.0) for a in x):  # NaN fails too
            raise PaintError(f"coefficients {list(x)} leave [0, 1]")
        key = vector_key(x)
        if key in self._evals:
            return self._evals[key]
        metrics = self._measure(key)
        ref = self.reference()
        ev = VectorEvaluation(
            key, self.objective.value(metrics, ref), self.objective.feasible(metrics, ref), metrics, source
        )
        self._evals[key] = ev
        self.evaluations.append(ev)
        return ev

    def best(self) -> VectorEvaluation:
        """Lowest value, among feasible evaluations whenever one is; ties to the smaller coefficients."""
        if not self.evaluations:
            raise PaintError("no evaluation was made; raise the search budget")
        pool = [e for e in self.evaluations if e.feasible] or self.evaluations
        return min(pool, key=lambda e: (e.value, sum(e.alphas)))


@dataclass(frozen=True)
class BlockSearchResult:
    """What a per-block strategy found, and what it cost."""

    strategy: str
    objective: str
    alphas: Vector
    value: float
    feasible: bool
    evaluations: tuple[VectorEvaluation, ...]
    n_model_evals: int  # forward passes over the validation sets (zero-shot reference included)
    n_grad_evals: int  # forward + backward passes of the gradient oracle (blockwise)
    stopped: str
    history: tuple[dict[str, float], ...] = ()

    def to_dict(self, with_evaluations: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "evaluations"}
        out["alphas"] = list(self.alphas)
        out["history"] = list(self.history)
        if with_evaluations:
            out["evaluations"] = [e.to_dict() for e in self.evaluations]
        return out


def _result(name: str, ev: VectorEvaluator, stopped: str, n_grad: int = 0, history=()) -> BlockSearchResult:
    best = ev.best()
    return BlockSearchResult(
        name,
        ev.objective.name,
        best.alphas,
        best.value,
        best.feasible,
        tuple(ev.evaluations),
        ev.n_model_evals,
        n_grad,
        stopped,
        tuple(history),
    )


def tile(per_block: Sequence[float], n_vectors: int) -> list[float]:
    """The same per-block coefficients for every task vector (a flat vector, task-major)."""
    return [float(a) for _ in range(n_vectors) for a in per_block]


# ----------------------------------------------------------------------------- lines


def search_diagonal(ev: VectorEvaluator, cfg: SelectionConfig, n_vectors: int = 1) -> BlockSearchResult:
    """The single-alpha grid, every block equal (``strategy: grid`` with ``objective: entropy``)."""
    stopped = "done"
    try:
        ev.reference()
        for a in cfg.points():
            ev.evaluate([a] * ev.size, "grid")
    except BudgetExhausted:
        stopped = "budget"
    return _result("grid", ev, stopped)


def lines_vector(depths: Sequence[float], first: float, last: float, n_vectors: int = 1) -> list[float]:
    """alpha_l = first + (last - first) * depth_l for every block, repeated per task vector."""
    return tile([first + (last - first) * d for d in depths], n_vectors)


def search_lines(
    ev: VectorEvaluator, depths: Sequence[float], cfg: SelectionConfig, n_vectors: int = 1
) -> BlockSearchResult:
    """2-D search of (alpha of the first block, alpha of the last block); blocks between on the line.

    1. the diagonal (first = last): the single-alpha grid, so ``lines`` is never worse on
       validation than the grid it extends;
    2. every other pair of the grid, nearest the diagonal first;
    3. a pattern search around the best point: its 8 neighbours at half the grid step, the step
       halved when none improves, until the step is below ``xtol`` or the budget is spent.
    """
    pts = cfg.points()
    n = len(depths)
    stopped = "converged"

    def at(first: float, last: float, source: str) -> VectorEvaluation:
        return ev.evaluate(lines_vector(depths, first, last, n_vectors), source)

    try:
        ev.reference()
        for a in pts:
            at(a, a, "grid")
        pairs = sorted(((a, b) for a in pts for b in pts if a != b), key=lambda p: (abs(p[0] - p[1]), p))
        for a, b in pairs:
            at(a, b, "lines")
        step = (min(b - a for a, b in zip(pts, pts[1:])) if len(pts) > 1 else 0.5) / 2
        while step >= cfg.xtol:
            before = ev.best()
            first, last = before.alphas[0], before.alphas[n - 1]
            for da in (-step, 0.0, step):
                for db in (-step, 0.0, step):
                    a, b = first + da, last + db
                    if (da, db) != (0.0, 0.0) and 0.0 <= a <= 1.0 and 0.0 <= b <= 1.0:
                        at(a, b, "refine")
            if ev.best() is before:
                step /= 2
    except BudgetExhausted:
        stopped = "budget"
    return _result("lines", ev, stopped)


# ----------------------------------------------------------------------------- blockwise


@dataclass(frozen=True)
class GradientStep:
    """What the oracle returns at x: the penalised loss, its gradient over x, and the two terms."""

    value: float
    grad: np.ndarray
    patch: float
    support: float


GradientOracle = Callable[[np.ndarray, float], GradientStep]  # (x, multiplier) -> step


def search_blockwise(
    ev: VectorEvaluator,
    oracle: GradientOracle,
    cfg: SelectionConfig,
    n_vectors: int = 1,
) -> BlockSearchResult:
    """Projected Adam on the coefficients from the best single alpha, the support term held to a budget.

    1. the single-alpha grid of ``cfg.points()`` (every block equal): the start is the grid's
       choice, so ``blockwise`` is never worse on validation than it;
    2. ``cfg.blockwise.steps`` Adam steps (step size ``lr``, cosine-decayed to 0) on
       patch + lambda * support, x clipped to [0, 1] after each step. The support term at the start
       is the *budget* (the single alpha already meets the accuracy bound with it): lambda follows
       the Lagrange multiplier of "support <= budget" by multiplicative dual ascent,
       lambda <- lambda * exp(dual_lr * (support / budget - 1)), the exponent clipped to
       [-dual_lr, dual_lr] and lambda to [multiplier / 100, 100 * multiplier];
    3. every ``eval_every`` steps (and after the last) the iterate is measured; an infeasible one
       tightens the budget by 30 %.
    """
    bw = cfg.blockwise
    size = ev.size
    n_blocks = size // n_vectors
    stopped = "done"
    history: list[dict[str, float]] = []
    n_grad = 0
    try:
        ev.reference()
        for a in cfg.points():
            ev.evaluate(tile([a] * n_blocks, n_vectors), "grid")
        x = np.asarray(ev.best().alphas, dtype=np.float64)
        lam = bw.multiplier
        budget: float | None = None
        m = np.zeros(size)
        v = np.zeros(size)
        b1, b2, eps = 0.9, 0.999, 1e-8
        for t in range(1, bw.steps + 1):
            g = oracle(x.copy(), lam)
            n_grad += 1
            if not np.all(np.isfinite(g.grad)):
                stopped = "non-finite gradient"
                break
            if budget is None:
                budget = max(g.support, 1e-12)
            rec = {"step": t, "loss": g.value, "patch": g.patch, "support": g.support, "multiplier": lam}
            rec["budget"] = budget
            m = b1 * m + (1 - b1) * g.grad
            v = b2 * v + (1 - b2) * g.grad**2
            lr = bw.lr * 0.5 * (1 + math.cos(math.pi * (t - 1) / bw.steps))
            x = np.clip(x - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps), 0.0, 1.0)
            step = min(bw.dual_lr, max(-bw.dual_lr, bw.dual_lr * (g.support / budget - 1.0)))
            lam = min(100 * bw.multiplier, max(bw.multiplier / 100, lam * math.exp(step)))
            if t % bw.eval_every == 0 or t == bw.steps:
                e = ev.evaluate(x.tolist(), f"step {t}")
                rec.update(value=e.value, feasible=float(e.feasible))
                if not e.feasible:
                    budget *= 0.7
            history.append(rec)
    except BudgetExhausted:
        stopped = "budget"
    return _result("blockwise", ev, stopped, n_grad, history)


BLOCK_STRATEGIES = ("lines", "blockwise")


def is_block_choice(cfg: SelectionConfig) -> bool:
    """Whether ``cfg`` chooses per-block coefficients (or needs the vector measure: ``entropy``)."""
    return cfg.strategy in BLOCK_STRATEGIES or cfg.objective == "entropy"

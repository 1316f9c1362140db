"""Choosing coefficients: objectives, search strategies and the one selection config (pure: no model code).

A *measure* (alpha -> per-task validation metrics) comes from the caller (the pipeline's task
pool); this package turns it into a choice: :class:`SelectionConfig` (one config, one default
everywhere), objectives (:mod:`.objectives`), the counting, caching :class:`Evaluator`, the
strategies (:mod:`.strategies`) and the reported rules on a sweep (:mod:`.rules`).
"""

from paint.selection.config import PAPER_GRID, SelectionConfig, SelectionFields, rule_key
from paint.selection.evaluator import BudgetExhausted, Evaluation, Evaluator, alpha_key, function_evaluator
from paint.selection.objectives import (
    OBJECTIVES,
    Constrained,
    CurveValue,
    LossSum,
    MeanAccuracy,
    Measure,
    Objective,
    TaskGroups,
    TaskMetrics,
    make_objective,
)
from paint.selection.rules import select_alpha, select_candidates
from paint.selection.strategies import (
    STRATEGIES,
    SearchResult,
    bracket_of,
    evaluator_for,
    polynomial_minimum,
    run_search,
)

__all__ = [
    "OBJECTIVES",
    "PAPER_GRID",
    "STRATEGIES",
    "BudgetExhausted",
    "Constrained",
    "CurveValue",
    "Evaluation",
    "Evaluator",
    "LossSum",
    "MeanAccuracy",
    "Measure",
    "Objective",
    "SearchResult",
    "SelectionConfig",
    "SelectionFields",
    "TaskGroups",
    "TaskMetrics",
    "alpha_key",
    "bracket_of",
    "evaluator_for",
    "function_evaluator",
    "make_objective",
    "polynomial_minimum",
    "rule_key",
    "run_search",
    "select_alpha",
    "select_candidates",
]

"""Greedy model soup: not a per-tensor method, it needs an evaluator (Wortsman et al. 2022, arXiv:2203.05482)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from paint.errors import PaintError
from paint.types import StateDict
from paint.weights.methods import GREEDY_SOUP, SOUPS
from paint.weights.stream import merge_state_dicts

GREEDY_SOUP_PAPERS = (SOUPS,)
__all__ = ["GREEDY_SOUP", "GREEDY_SOUP_PAPERS", "GreedySoupResult", "greedy_soup"]


@dataclass(frozen=True)
class GreedySoupResult:
    """Outcome of :func:`greedy_soup`.

    Attributes:
        state_dict: the soup (uniform average of the ingredients).
        ingredients: indices of the candidates in the soup, in the order they were added.
        individual: each candidate's own validation accuracy.
        history: one record per candidate tried: index, accuracy of the soup with it, kept.
        accuracy: validation accuracy of the returned soup.
    """

    state_dict: dict[str, torch.Tensor]
    ingredients: list[int]
    individual: list[float]
    history: list[dict[str, Any]]
    accuracy: float

    def kept(self) -> list[tuple[int, float]]:
        """(candidate index, soup accuracy right after it was added) for each ingredient, in order."""
        return [(h["candidate"], h["accuracy"]) for h in self.history if h["kept"]]


def greedy_soup(
    candidates: Sequence[StateDict],
    evaluate: Callable[[StateDict], float],
    individual: Sequence[float] | None = None,
) -> GreedySoupResult:
    """Greedy soup (Wortsman et al. 2022, arXiv:2203.05482).

    Sort the candidates by their own validation accuracy, start from the best, and add each
    next one to the uniform average only if the soup's validation accuracy does not fall.

    Args:
        candidates: fine-tuned state dicts of one architecture (lazy mappings are fine).
        evaluate: ``evaluate(state_dict) -> validation accuracy``, e.g. built on
            :func:`paint.evaluation.results.evaluate_split`.
        individual: the candidates' own accuracies when already known (skips evaluating them).
    """
    if not candidates:
        raise PaintError("greedy soup needs at least one candidate model")
    scores = [float(s) for s in individual] if individual is not None else [float(evaluate(c)) for c in candidates]
    if len(scores) != len(candidates):
        raise PaintError(f"{len(candidates)} candidates but {len(scores)} individual accuracies")
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
    ingredients = [order[0]]
    best = scores[order[0]]
    history: list[dict[str, Any]] = [{"candidate": order[0], "accuracy": best, "kept": True}]
    soup = dict(candidates[order[0]])
    for i in order[1:]:
        trial_members = [candidates[j] for j in ingredients + [i]]
        trial = merge_state_dicts(trial_members[0], trial_members, method="linear")
        acc = float(evaluate(trial))
        kept = acc >= best
        history.append({"candidate": i, "accuracy": acc, "kept": kept})
        if kept:
            ingredients.append(i)
            best, soup = acc, trial
    if len(ingredients) == 1:
        soup = {k: v.clone() for k, v in soup.items()}
    return GreedySoupResult(soup, ingredients, scores, history, best)

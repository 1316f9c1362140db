"""Merge methods: one explicit name -> method registry of pure per-tensor functions.

Every method merges ONE tensor: it gets the base model's tensor, the list of the merged
models' tensors (same shape and dtype), one weight or coefficient per model, its validated
parameters and the tensor's name, and returns the merged tensor in the base dtype. The
streaming engine (:mod:`paint.weights.stream`) calls it key by key; integer and boolean
tensors never reach a method (they are copied from the base).

Task arithmetic, TIES, DARE and DARE-TIES are configured instances of one implementation,
:func:`delta_merge` (sparsify the task vectors, optionally elect signs, combine), as in the
"generalized task arithmetic" view used by mergekit and FusionBench.

Greedy soup is not per-tensor: it needs an evaluation callback, see :func:`greedy_soup`.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from pydantic import Field

from paint.config import StrictModel, parse_config
from paint.errors import PaintError
from paint.weights.ops import lerp_tensor

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Paper:
    """A paper a method implements."""

    title: str
    arxiv: str

    def cite(self) -> str:
        return f"{self.title} (arXiv:{self.arxiv})"


PAINT = Paper("Patching open-vocabulary models by interpolating weights", "2208.05592")
WISE_FT = Paper("Robust fine-tuning of zero-shot models", "2109.01903")
SOUPS = Paper(
    "Model soups: averaging weights of multiple fine-tuned models improves accuracy without increasing "
    "inference time",
    "2203.05482",
)
TASK_ARITHMETIC = Paper("Editing Models with Task Arithmetic", "2212.04089")
TIES = Paper("TIES-Merging: Resolving Interference When Merging Models", "2306.01708")
DARE = Paper("Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch", "2311.03099")
MODEL_STOCK = Paper("Model Stock: All we need is just a few fine-tuned models", "2403.19522")


class TensorMerge(Protocol):
    def __call__(
        self,
        base: torch.Tensor,
        models: Sequence[torch.Tensor],
        weights: Sequence[float],
        params: Any,
        key: str,
    ) -> torch.Tensor: ...


# ---------------------------------------------------------------------------- parameters


class LinearParams(StrictModel):
    """Weighted average of the models (the base is not part of the average unless listed)."""

    normalize: bool = Field(True, description="divide by the sum of the weights")


class TaskArithmeticParams(StrictModel):
    """``base + scaling * sum_i w_i * (theta_i - base)``."""

    scaling: float = Field(1.0, ge=-100.0, le=100.0, description="lambda applied to the summed task vectors")


class TiesParams(StrictModel):
    density: float = Field(0.2, gt=0.0, le=1.0, description="fraction of each task vector kept (top-k by magnitude)")
    scaling: float = Field(1.0, ge=-100.0, le=100.0, description="lambda applied to the merged task vector")


class DareParams(StrictModel):
    drop_rate: float = Field(0.5, ge=0.0, lt=1.0, description="probability p of dropping each delta entry")
    scaling: float = Field(1.0, ge=-100.0, le=100.0, description="lambda applied to the merged task vector")
    seed: int = Field(0, ge=0, description="seed; each tensor's mask is seeded from (seed, tensor name, model index)")


class NoParams(StrictModel):
    """The method takes no parameters."""


# ---------------------------------------------------------------------------- helpers


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Compute in float32 or wider: half precision sums lose too much."""
    return torch.promote_types(dtype, torch.float32)


def tensor_seed(seed: int, key: str, index: int) -> int:
    """A 63-bit seed derived from (seed, tensor name, model index), stable across runs and platforms."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def task_vectors(base: torch.Tensor, models: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``theta_i - base`` for each model, in the work dtype."""
    b = base.to(work_dtype(base.dtype))
    return [m.to(b.dtype) - b for m in models]


def trim_magnitude(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``round(density * numel)`` entries of largest magnitude, zero the rest.

    Entries tied with the k-th largest magnitude are all kept. The trim is per tensor (as in
    mergekit), which streaming needs; the TIES paper ranks over the whole flattened model.
    """
    n = tau.numel()
    k = int(round(density * n))
    if k >= n:
        return tau
    if k <= 0:
        return torch.zeros_like(tau)
    mag = tau.abs().reshape(-1)
    threshold = torch.kthvalue(mag, n - k + 1).values  # the k-th largest magnitude
    return tau * (tau.abs() >= threshold)


def drop_and_rescale(tau: torch.Tensor, drop_rate: float, seed: int) -> torch.Tensor:
    """DARE: zero each entry with probability ``drop_rate``, scale survivors by ``1 / (1 - drop_rate)``."""
    if drop_rate == 0.0:
        return tau
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(tau.shape, generator=gen, dtype=torch.float32) >= drop_rate
    return tau * keep / (1.0 - drop_rate)


def elect_and_mean(taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """TIES: elect each entry's sign by summed mass, average the entries that agree with it."""
    stacked = torch.stack(list(taus))  # (M, *shape)
    elected = torch.sign(stacked.sum(dim=0))  # (*shape); 0 where the mass cancels
    agree = (torch.sign(stacked) == elected) & (stacked != 0)  # (M, *shape)
    total = (stacked * agree).sum(dim=0)
    count = agree.sum(dim=0).clamp(min=1)
    return total / count


# ---------------------------------------------------------------------------- methods


def linear_merge(
    base: torch.Tensor, models: Sequence[torch.Tensor], weights: Sequence[float], params: LinearParams, key: str
) -> torch.Tensor:
    """``sum_i w_i * theta_i`` (divided by ``sum_i w_i`` when normalizing).

    PAINT and WiSE-FT are two models weighted ``(1 - alpha, alpha)``; a uniform soup is N
    models with equal weights. Two normalized models go through
    :func:`paint.weights.ops.lerp_tensor`, so the result equals ``paint interpolate`` bit for bit.
    """
    total = float(sum(weights))
    if params.normalize:
        if total == 0.0:
            raise PaintError(f"linear merge of {key!r}: the weights sum to 0; give weights with a non-zero sum")
        if len(models) == 2:
            return lerp_tensor(models[0], models[1], float(weights[1]) / total)
        coefs = [float(w) / total for w in weights]
    else:
        coefs = [float(w) for w in weights]
    wd = work_dtype(models[0].dtype)
    acc = torch.zeros(models[0].shape, dtype=wd)
    for c, m in zip(coefs, models):
        acc.add_(m.to(wd), alpha=c)
    return acc.to(base.dtype)


def delta_merge(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    weights: Sequence[float],
    params: Any,
    key: str,
    *,
    sparsify: Literal["none", "magnitude", "random"],
    sign_consensus: bool,
) -> torch.Tensor:
    """The one implementation behind task arithmetic, TIES, DARE and DARE-TIES.

    1. task vectors ``tau_i = theta_i - base``;
    2. sparsify each: ``magnitude`` keeps the top ``params.density`` fraction (TIES trim),
       ``random`` drops with probability ``params.drop_rate`` and rescales (DARE), seeded per
       tensor from ``(params.seed, key, i)``;
    3. weight: ``w_i * tau_i``;
    4. combine: plain sum, or with ``sign_consensus`` the TIES elected-sign disjoint mean;
    5. ``base + params.scaling * merged``, cast to the base dtype.
    """
    taus = task_vectors(base, models)
    if sparsify == "magnitude":
        taus = [trim_magnitude(t, params.density) for t in taus]
    elif sparsify == "random":
        taus = [drop_and_rescale(t, params.drop_rate, tensor_seed(params.seed, key, i)) for i, t in enumerate(taus)]
    taus = [t * float(w) for t, w in zip(taus, weights)]
    if sign_consensus:
        merged = elect_and_mean(taus)
    else:
        merged = taus[0]
        for t in taus[1:]:
            merged = merged + t
    out = base.to(merged.dtype) + float(params.scaling) * merged
    return out.to(base.dtype)


def model_stock_merge(
    base: torch.Tensor, models: Sequence[torch.Tensor], weights: Sequence[float], params: NoParams, key: str
) -> torch.Tensor:
    """Model Stock: ``t * mean_i(theta_i) + (1 - t) * base`` with ``t = N cos / (1 + (N - 1) cos)``.

    ``cos`` is the mean pairwise cosine between the task vectors of this tensor, clamped to
    [0, 1] (the paper assumes a positive angle; a negative one would extrapolate away).
    """
    n = len(models)
    taus = [t.reshape(-1) for t in task_vectors(base, models)]
    cosines = [
        torch.nn.functional.cosine_similarity(taus[i], taus[j], dim=0, eps=1e-12)
        for i in range(n)
        for j in range(i + 1, n)
    ]
    cos = float(torch.stack(cosines).mean().clamp(0.0, 1.0))
    t = n * cos / (1.0 + (n - 1) * cos)
    wd = work_dtype(base.dtype)
    mean = torch.stack([m.to(wd) for m in models]).mean(dim=0)
    return (t * mean + (1.0 - t) * base.to(wd)).to(base.dtype)


# ---------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MergeMethod:
    """One registry entry.

    Attributes:
        name: registry key.
        fn: the per-tensor merge.
        params: the pydantic model of its parameters (validated before any tensor is read).
        papers: what it implements.
        description: one line for help and model cards.
        elementwise: output entry j depends only on input entries j, so large tensors may be
            merged in row chunks with bit-identical results.
        min_models: fewest models it needs.
        uses_weights: whether per-model weights mean anything (otherwise they must stay 1).
        uses_base: whether the base tensor enters the maths.
    """

    name: str
    fn: TensorMerge
    params: type[StrictModel]
    papers: tuple[Paper, ...]
    description: str
    elementwise: bool
    min_models: int = 1
    uses_weights: bool = True
    uses_base: bool = True

    def parse_params(self, data: Mapping[str, Any] | None) -> StrictModel:
        """Validate parameters; a bad one raises :class:`PaintError` naming it."""
        return parse_config(self.params, dict(data or {}), f"parameters of method {self.name!r}")


METHODS: dict[str, MergeMethod] = {
    "linear": MergeMethod(
        name="linear",
        fn=linear_merge,
        params=LinearParams,
        papers=(PAINT, WISE_FT, SOUPS),
        description="weighted average of the models (PAINT / WiSE-FT interpolation, uniform soup)",
        elementwise=True,
        uses_base=False,
    ),
    "task_arithmetic": MergeMethod(
        name="task_arithmetic",
        fn=functools.partial(delta_merge, sparsify="none", sign_consensus=False),
        params=TaskArithmeticParams,
        papers=(TASK_ARITHMETIC,),
        description="base + scaling * sum of weighted task vectors (negative weight = negation)",
        elementwise=True,
    ),
    "ties": MergeMethod(
        name="ties",
        fn=functools.partial(delta_merge, sparsify="magnitude", sign_consensus=True),
        params=TiesParams,
        papers=(TIES,),
        description="trim task vectors to top-k magnitude, elect signs by mass, disjoint mean",
        elementwise=False,
    ),
    "dare_task_arithmetic": MergeMethod(
        name="dare_task_arithmetic",
        fn=functools.partial(delta_merge, sparsify="random", sign_consensus=False),
        params=DareParams,
        papers=(DARE, TASK_ARITHMETIC),
        description="drop-and-rescale task vectors (seeded), then task arithmetic",
        elementwise=False,
    ),
    "dare_ties": MergeMethod(
        name="dare_ties",
        fn=functools.partial(delta_merge, sparsify="random", sign_consensus=True),
        params=DareParams,
        papers=(DARE, TIES),
        description="drop-and-rescale task vectors (seeded), then TIES sign election and disjoint mean",
        elementwise=False,
    ),
    "model_stock": MergeMethod(
        name="model_stock",
        fn=model_stock_merge,
        params=NoParams,
        papers=(MODEL_STOCK,),
        description="per-tensor interpolation of the average towards the base by the task vectors' angle",
        elementwise=False,
        min_models=2,
        uses_weights=False,
    ),
}

GREEDY_SOUP = "greedy_soup"
GREEDY_SOUP_PAPERS = (SOUPS,)


def get_method(name: str) -> MergeMethod:
    """The registry entry for ``name``; an unknown name raises :class:`PaintError` listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join([*METHODS, GREEDY_SOUP])
        raise PaintError(f"unknown merge method {name!r}; choose one of: {known}") from None


def check_weights(method: MergeMethod, weights: Sequence[float]) -> None:
    """Raise :class:`PaintError` when the weights do not suit the method."""
    if len(weights) < method.min_models:
        raise PaintError(f"method {method.name!r} needs at least {method.min_models} models, got {len(weights)}")
    for i, w in enumerate(weights):
        if not math.isfinite(w):
            raise PaintError(f"model {i}: weight {w} is not a finite number")
    if not method.uses_weights and any(w != 1.0 for w in weights):
        raise PaintError(f"method {method.name!r} does not use per-model weights; remove them (or set them to 1)")


# ---------------------------------------------------------------------------- greedy soup


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
    from paint.weights.stream import (
        merge_state_dicts,  # the soup is the linear method; avoid an import cycle
    )

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

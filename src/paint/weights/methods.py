"""Merge methods: one explicit name -> method registry of per-tensor merges, each citing its paper.

A method merges ONE tensor, streamed as consecutive row chunks (one chunk when small):

- ``prepare(source, n_models, weights, params, key) -> state`` (optional) makes a first
  pass over the tensor's chunks for what needs the whole tensor (a TIES trim threshold, a
  DARE L1 norm, Model Stock's angle) and returns it;
- ``combine(base, models, weights, params, key, state)`` merges one row chunk: the base's
  rows, each model's rows (same shape and dtype), one weight or coefficient per model, and
  returns the merged rows in the base dtype.

So every method's memory is a few row chunks, whatever the tensor's size, and the result
does not depend on the chunking (tests check it bit for bit). A method marked
``whole_tensor`` (the SVD merges Iso-C, Iso-CTS and TSV-M) gets each tensor whole, as one
chunk: one tensor's worth per model, never a whole checkpoint. Integer and boolean tensors
never reach a method (they are copied from the base). :meth:`MergeMethod.fn` merges a whole
in-memory tensor the same way.

Task arithmetic, TIES, DARE and DARE-TIES are configured instances of one implementation
(sparsify the task vectors, weight them, optionally elect signs, combine), mergekit's
"generalized task arithmetic", with mergekit's semantics and defaults (see
:mod:`paint.weights.sparsify` and the README). The greedy soup needs an evaluator and lives
in :mod:`paint.weights.soup`. RegMean (``needs_data``) needs each model's Gram matrices, which
the pipeline gathers on the model's task and binds (:mod:`paint.weights.regmean`).

This module is the registry; the maths is :mod:`paint.weights.combine` (and the modules it
names), the parameters :mod:`paint.weights.method_params`, the citations
:mod:`paint.weights.papers`. Their names stay importable from here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from paint.config import StrictModel, parse_config
from paint.errors import PaintError
from paint.types import is_image_tower_key
from paint.weights.blocks import block_of
from paint.weights.chunks import single
from paint.weights.combine import (  # noqa: F401 (re-exported: the maths' names as they were)
    Combine,
    Prepare,
    delta_combine,
    delta_prepare,
    linear_merge,
    model_stock_merge,
    model_stock_prepare,
    subspace_combine,
)
from paint.weights.method_params import (  # noqa: F401 (re-exported)
    DareParams,
    IsoCParams,
    IsoCtsParams,
    LinearParams,
    NoParams,
    TaskArithmeticParams,
    TiesParams,
    TsvMParams,
)
from paint.weights.ops import finite_coefficient
from paint.weights.papers import (  # noqa: F401 (re-exported)
    DARE,
    ISO,
    MODEL_STOCK,
    PAINT,
    REGMEAN,
    SOUPS,
    TASK_ARITHMETIC,
    TIES,
    TSV,
    WISE_FT,
    Paper,
)
from paint.weights.regmean import RegMeanParams, regmean_merge, regmean_prepare
from paint.weights.subspace import LazyTaskVectors, iso_c_delta, iso_cts_delta, tsv_m_delta


def _iso_c(taus: LazyTaskVectors, params: IsoCParams) -> torch.Tensor:
    return iso_c_delta(taus)


def _iso_cts(taus: LazyTaskVectors, params: IsoCtsParams) -> torch.Tensor:
    return iso_cts_delta(taus, params.common_space_fraction)


def _tsv_m(taus: LazyTaskVectors, params: TsvMParams) -> torch.Tensor:
    return tsv_m_delta(taus, params.rank_fraction)


# ---------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MergeMethod:
    """One registry entry.

    Attributes:
        name: registry key.
        combine: merges one row chunk (see the module docstring).
        params: the pydantic model of its parameters (validated before any tensor is read).
        papers: what it implements.
        description: one line for help and model cards.
        prepare: the first pass over a tensor's chunks, or None when rows merge independently.
        min_models: fewest models it needs.
        uses_weights: whether per-model weights mean anything (otherwise they must stay 1).
        uses_base: whether the base tensor enters the maths.
        whole_tensor: merge each tensor whole, never in row chunks (an SVD needs the whole
            matrix): memory is one tensor per input plus its factors, never a whole checkpoint.
        needs_data: needs per-model data (a task per model) that the pipeline gathers and binds
            before merging: RegMean's Gram matrices (:func:`paint.weights.regmean.with_grams`).
    """

    name: str
    combine: Combine
    params: type[StrictModel]
    papers: tuple[Paper, ...]
    description: str
    prepare: Prepare | None = None
    min_models: int = 1
    uses_weights: bool = True
    uses_base: bool = True
    whole_tensor: bool = False
    needs_data: bool = False

    def parse_params(self, data: Mapping[str, Any] | None) -> StrictModel:
        """Validate parameters; a bad one raises :class:`PaintError` naming it."""
        return parse_config(self.params, dict(data or {}), f"parameters of method {self.name!r}")

    def fn(
        self, base: torch.Tensor, models: Sequence[torch.Tensor], weights: Sequence[float], params: Any, key: str
    ) -> torch.Tensor:
        """Merge one whole in-memory tensor (prepare and combine on a single chunk)."""
        source = single({0: base, **{i + 1: m for i, m in enumerate(models)}})
        state = self.prepare(source, len(models), weights, params, key) if self.prepare else None
        return self.combine(base, models, weights, params, key, state)


def _delta(sparsify: Literal["none", "magnitude", "random"], sign_consensus: bool) -> dict[str, Any]:
    """The prepare/combine pair of one generalized-task-arithmetic configuration."""
    return {
        "prepare": functools.partial(delta_prepare, sparsify=sparsify),
        "combine": functools.partial(delta_combine, sign_consensus=sign_consensus),
    }


METHODS: dict[str, MergeMethod] = {
    "linear": MergeMethod(
        name="linear",
        combine=linear_merge,
        params=LinearParams,
        papers=(PAINT, WISE_FT, SOUPS),
        description="weighted average of the models (PAINT / WiSE-FT interpolation, uniform soup)",
        uses_base=False,
    ),
    "task_arithmetic": MergeMethod(
        name="task_arithmetic",
        params=TaskArithmeticParams,
        papers=(TASK_ARITHMETIC,),
        description="base + scaling * sum of weighted task vectors (negative weight = negation)",
        **_delta("none", sign_consensus=False),
    ),
    "ties": MergeMethod(
        name="ties",
        params=TiesParams,
        papers=(TIES,),
        description="trim each tensor's task vectors to top-k magnitude, elect signs by mass, weighted disjoint mean",
        **_delta("magnitude", sign_consensus=True),
    ),
    "dare_task_arithmetic": MergeMethod(
        name="dare_task_arithmetic",
        params=DareParams,
        papers=(DARE, TASK_ARITHMETIC),
        description="drop-and-rescale task vectors (seeded), then task arithmetic (mergekit's dare_linear)",
        **_delta("random", sign_consensus=False),
    ),
    "dare_ties": MergeMethod(
        name="dare_ties",
        params=DareParams,
        papers=(DARE, TIES),
        description="drop-and-rescale task vectors (seeded), then TIES sign election",
        **_delta("random", sign_consensus=True),
    ),
    "model_stock": MergeMethod(
        name="model_stock",
        prepare=model_stock_prepare,
        combine=model_stock_merge,
        params=NoParams,
        papers=(MODEL_STOCK,),
        description="per-tensor interpolation of the average towards the base by the task vectors' angle",
        min_models=2,
        uses_weights=False,
    ),
    "iso_c": MergeMethod(
        name="iso_c",
        combine=functools.partial(subspace_combine, merge=_iso_c),
        params=IsoCParams,
        papers=(ISO,),
        description="per 2-D tensor, the summed task vectors with every singular value set to their mean",
        whole_tensor=True,
    ),
    "iso_cts": MergeMethod(
        name="iso_cts",
        combine=functools.partial(subspace_combine, merge=_iso_cts),
        params=IsoCtsParams,
        papers=(ISO,),
        description="per 2-D tensor, a common subspace plus task-specific subspaces, orthogonalised, isotropic",
        whole_tensor=True,
    ),
    "tsv_m": MergeMethod(
        name="tsv_m",
        combine=functools.partial(subspace_combine, merge=_tsv_m),
        params=TsvMParams,
        papers=(TSV,),
        description="per 2-D tensor, each task's top singular vectors, stacked and decorrelated (TSV-Merge)",
        whole_tensor=True,
    ),
    "regmean": MergeMethod(
        name="regmean",
        prepare=functools.partial(regmean_prepare, grams=None),  # the pipeline binds them (with_grams)
        combine=regmean_merge,
        params=RegMeanParams,
        papers=(REGMEAN,),
        description="linear layers solved from Gram matrices of their inputs on each model's task, mean elsewhere",
        uses_weights=False,
        uses_base=False,
        needs_data=True,
    ),
}

GREEDY_SOUP = "greedy_soup"
"""Not a per-tensor method (it needs an evaluator): see :mod:`paint.weights.soup`."""


def _block_weights_combine(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    weights: Sequence[float],
    params: Any,
    key: str,
    state: Sequence[Any],
    *,
    inner: Combine,
    block_weights: Sequence[Mapping[str, float] | None],
) -> torch.Tensor:
    """``inner`` with each model's weight for ``key`` taken from its per-block coefficients (image tower only)."""
    if is_image_tower_key(key):
        weights = [w if bw is None else float(bw[block_of(key)]) for w, bw in zip(weights, block_weights)]
    return inner(base, models, weights, params, key, state)


def with_block_weights(method: MergeMethod, block_weights: Sequence[Mapping[str, float] | None]) -> MergeMethod:
    """Task arithmetic with one coefficient per block of the image tower and model (layer-wise task arithmetic).

    ``block_weights[i]`` maps each block of :func:`paint.weights.blocks.block_names` to model i's
    coefficient there (None: its scalar weight everywhere); tensors outside the image tower keep
    the scalar weights. Only ``task_arithmetic`` takes them: the sign election and drop-and-rescale
    of TIES / DARE weigh models per tensor in ways a per-block coefficient does not define.
    """
    if method.name != "task_arithmetic":
        raise PaintError(f"per-block weights (block_weights) need method 'task_arithmetic', not {method.name!r}")
    for i, bw in enumerate(block_weights):
        for block, w in (bw or {}).items():
            finite_coefficient(w, f"model {i}: weight of block {block!r}")
    combine = functools.partial(_block_weights_combine, inner=method.combine, block_weights=list(block_weights))
    return dataclasses.replace(method, combine=combine, description=method.description + ", per block")


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
        finite_coefficient(w, f"model {i}: weight")
    if not method.uses_weights and any(w != 1.0 for w in weights):
        raise PaintError(f"method {method.name!r} does not use per-model weights; remove them (or set them to 1)")

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
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field

from paint.config import StrictModel, parse_config
from paint.errors import PaintError
from paint.weights.chunks import ChunkSource, OrderedSum, single, work_dtype
from paint.weights.ops import finite_coefficient, lerp_tensor
from paint.weights.regmean import RegMeanParams, regmean_merge, regmean_prepare
from paint.weights.sparsify import Rescale, magnitude_trim, random_drop, tensor_seed
from paint.weights.subspace import LazyTaskVectors, iso_c_delta, iso_cts_delta, mean_delta, tsv_m_delta

Prepare = Callable[[ChunkSource, int, Sequence[float], Any, str], Any]
Combine = Callable[[torch.Tensor, Sequence[torch.Tensor], Sequence[float], Any, str, Any], torch.Tensor]


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
    "Model soups: averaging weights of multiple fine-tuned models improves accuracy without increasing inference time",
    "2203.05482",
)
TASK_ARITHMETIC = Paper("Editing Models with Task Arithmetic", "2212.04089")
TIES = Paper("TIES-Merging: Resolving Interference When Merging Models", "2306.01708")
DARE = Paper(
    "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch", "2311.03099"
)
MODEL_STOCK = Paper("Model Stock: All we need is just a few fine-tuned models", "2403.19522")
REGMEAN = Paper("Dataless Knowledge Fusion by Merging Weights of Language Models", "2212.09849")
ISO = Paper("No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces", "2502.04959")
TSV = Paper("Task Singular Vectors: Reducing Task Interference in Model Merging", "2412.00081")


# ---------------------------------------------------------------------------- parameters


class LinearParams(StrictModel):
    """Weighted average of the models (the base is not part of the average unless listed)."""

    normalize: bool = Field(True, description="divide by the sum of the weights")


class TaskArithmeticParams(StrictModel):
    """``base + scaling * sum_i w_i * (theta_i - base)`` (mergekit's ``task_arithmetic``)."""

    scaling: float = Field(1.0, ge=-100.0, le=100.0, description="lambda applied to the merged task vector")
    normalize: bool = Field(False, description="divide the summed task vectors by the sum of the weights")


class TiesParams(StrictModel):
    """TIES with mergekit's semantics: per-tensor trim, elect by summed mass, weighted disjoint mean."""

    density: float = Field(0.2, gt=0.0, le=1.0, description="fraction of each tensor's task vector kept (top-k)")
    scaling: float = Field(1.0, ge=-100.0, le=100.0, description="lambda applied to the merged task vector")
    normalize: bool = Field(
        True, description="divide by the summed weights of the models that agree with the elected sign"
    )


class DareParams(StrictModel):
    """DARE with mergekit's defaults (``dare_linear`` / ``dare_ties``): L1-norm rescale, no normalization."""

    drop_rate: float = Field(0.5, ge=0.0, lt=1.0, description="probability p of dropping each delta entry")
    scaling: float = Field(1.0, ge=-100.0, le=100.0, description="lambda applied to the merged task vector")
    seed: int = Field(0, ge=0, description="seed; each tensor's mask is seeded from (seed, tensor name, model index)")
    rescale: Rescale = Field(
        "l1", description="l1: match each tensor's L1 norm (mergekit); paper: divide by 1 - p; none"
    )
    normalize: bool = Field(False, description="divide by the summed weights (of the agreeing models with TIES)")


class IsoCParams(StrictModel):
    """Iso-C with fusion_bench's semantics and defaults (``ISO_C_Merge``: scaling_factor 1, no excluded keys)."""

    scaling: float = Field(
        1.0, ge=-100.0, le=100.0, description="lambda applied to the merged task vector (fusion_bench's scaling_factor)"
    )
    exclude_keys: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns of 2-D tensors merged by the mean task vector instead (fusion_bench's exclude_keys)",
    )


class IsoCtsParams(IsoCParams):
    """Iso-CTS with fusion_bench's semantics and defaults (``ISO_CTS_Merge``: common_space_fraction 0.8)."""

    common_space_fraction: float = Field(
        0.8, ge=0.0, le=1.0, description="share of each 2-D tensor's rank given to the common subspace"
    )


class TsvMParams(StrictModel):
    """TSV-M with fusion_bench's semantics and defaults (``TaskSingularVectorMerging``: alpha 1)."""

    scaling: float = Field(
        1.0, ge=-100.0, le=100.0, description="lambda applied to the merged task vector (fusion_bench's alpha)"
    )
    rank_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="share of each 2-D tensor's rank split among the tasks: each keeps int(rank * fraction / tasks)",
    )
    exclude_keys: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns of 2-D tensors merged by the mean task vector instead (fusion_bench's exclude_keys)",
    )


class NoParams(StrictModel):
    """The method takes no parameters."""


# ---------------------------------------------------------------------------- linear


def linear_merge(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    weights: Sequence[float],
    params: LinearParams,
    key: str,
    state: Any = None,
) -> torch.Tensor:
    """``sum_i w_i * theta_i`` (divided by ``sum_i w_i`` when normalizing); elementwise.

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


# ---------------------------------------------------------------------------- generalized task arithmetic


def _tau_chunks(source: ChunkSource, i: int) -> Callable[[], Any]:
    """Model i's task-vector chunks ``theta_i - base`` in the work dtype, fresh at each call."""

    def chunks() -> Any:
        for b, m in zip(source(0), source(i + 1)):
            wd = work_dtype(b.dtype)
            yield m.to(wd) - b.to(wd)

    return chunks


def delta_prepare(
    source: ChunkSource,
    n_models: int,
    weights: Sequence[float],
    params: Any,
    key: str,
    *,
    sparsify: Literal["none", "magnitude", "random"],
) -> list[Any]:
    """One sparsifier per model (None: keep every entry), built one model at a time."""
    if sparsify == "magnitude":
        return [magnitude_trim(_tau_chunks(source, i), params.density) for i in range(n_models)]
    if sparsify == "random":
        return [
            random_drop(_tau_chunks(source, i), params.drop_rate, tensor_seed(params.seed, key, i), params.rescale)
            for i in range(n_models)
        ]
    return [None] * n_models


def _consensus(taus: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool) -> torch.Tensor:
    """TIES: elect each entry's sign by summed mass (>= 0 elects +), keep the models that agree."""
    mass = taus[0].clone()
    for t in taus[1:]:
        mass += t
    positive = mass >= 0  # the elected sign: + where the mass is >= 0
    del mass
    mixed = torch.zeros_like(taus[0])
    divisor = torch.zeros_like(taus[0]) if normalize else None
    for t, w in zip(taus, weights):
        agree = torch.where(positive, t > 0, t < 0)  # a zero entry never agrees
        mixed += torch.where(agree, t, 0.0)
        if divisor is not None:
            divisor += torch.where(agree, float(w), 0.0)
    if divisor is not None:
        mixed /= divisor.masked_fill_(divisor == 0, 1.0)
    return mixed


def delta_combine(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    weights: Sequence[float],
    params: Any,
    key: str,
    state: Sequence[Any],
    *,
    sign_consensus: bool,
) -> torch.Tensor:
    """The one implementation behind task arithmetic, TIES, DARE and DARE-TIES (mergekit's order).

    1. task vectors ``tau_i = theta_i - base``, sparsified by ``state[i]`` (TIES trim, DARE drop);
    2. weight: ``w_i * tau_i``;
    3. combine: sum, or with ``sign_consensus`` the sum of the entries agreeing with the
       elected sign; with ``params.normalize`` divide by the summed weights (of the agreeing
       models), a zero divisor counting as 1;
    4. ``base + params.scaling * merged``, cast to the base dtype.
    """
    wd = work_dtype(base.dtype)
    b = base.to(wd)
    taus = []
    for m, w, sparsifier in zip(models, weights, state):
        tau = m.to(wd) - b
        taus.append((tau if sparsifier is None else sparsifier(tau)) * float(w))
    if sign_consensus:
        mixed = _consensus(taus, weights, params.normalize)
    else:
        mixed = taus[0].clone()
        for t in taus[1:]:
            mixed += t
        total = float(sum(weights))
        if params.normalize and abs(total) >= 1e-8:
            mixed /= total
    if params.scaling != 1.0:
        mixed *= float(params.scaling)
    return (b + mixed).to(base.dtype)


# ---------------------------------------------------------------------------- model stock


def model_stock_prepare(
    source: ChunkSource, n_models: int, weights: Sequence[float], params: NoParams, key: str
) -> float:
    """``t = N cos / (1 + (N - 1) cos)`` from the mean pairwise cosine of the task vectors, clamped to [0, 1].

    One pass reads every model's rows together and accumulates the dot products and norms.
    """
    pairs = [(i, j) for i in range(n_models) for j in range(i, n_models)]
    sums = {p: OrderedSum() for p in pairs}
    for rows in zip(*(source(i) for i in range(n_models + 1))):
        wd = work_dtype(rows[0].dtype)
        taus = [m.to(wd) - rows[0].to(wd) for m in rows[1:]]
        for i, j in pairs:
            sums[i, j].add(taus[i] * taus[j])
    cosines = [
        sums[i, j].value / max(math.sqrt(sums[i, i].value) * math.sqrt(sums[j, j].value), 1e-12)
        for i, j in pairs
        if i < j
    ]
    cos = min(1.0, max(0.0, sum(cosines) / len(cosines)))
    return n_models * cos / (1.0 + (n_models - 1) * cos)


def model_stock_merge(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    weights: Sequence[float],
    params: NoParams,
    key: str,
    state: float,
) -> torch.Tensor:
    """Model Stock: ``t * mean_i(theta_i) + (1 - t) * base``, ``t`` from :func:`model_stock_prepare`.

    The paper assumes a positive angle; a negative one would extrapolate away, hence the clamp.
    """
    wd = work_dtype(base.dtype)
    mean = models[0].to(wd).clone()
    for m in models[1:]:
        mean += m.to(wd)
    mean /= len(models)
    return (state * mean + (1.0 - state) * base.to(wd)).to(base.dtype)


# ---------------------------------------------------------------------------- SVD merges (Iso-C, Iso-CTS, TSV-M)


def _iso_c(taus: LazyTaskVectors, params: IsoCParams) -> torch.Tensor:
    return iso_c_delta(taus)


def _iso_cts(taus: LazyTaskVectors, params: IsoCtsParams) -> torch.Tensor:
    return iso_cts_delta(taus, params.common_space_fraction)


def _tsv_m(taus: LazyTaskVectors, params: TsvMParams) -> torch.Tensor:
    return tsv_m_delta(taus, params.rank_fraction)


def subspace_combine(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    weights: Sequence[float],
    params: Any,
    key: str,
    state: Any,
    *,
    merge: Callable[[LazyTaskVectors, Any], torch.Tensor],
) -> torch.Tensor:
    """``base + scaling * merge(w_i * tau_i)`` for a 2-D tensor, ``base + scaling * mean_i(w_i * tau_i)`` otherwise.

    The shared frame of Iso-C, Iso-CTS and TSV-M (fusion_bench's; the maths is in
    :mod:`paint.weights.subspace`): task vectors ``tau_i = theta_i - base`` in float32 or wider,
    each scaled by its model's weight (fusion_bench's per-task alpha list in TSV-M; 1 by
    default), merged by ``merge`` when the tensor is 2-D and not matched by
    ``params.exclude_keys``, by their mean otherwise. Needs the whole tensor
    (``whole_tensor``): every model's copy of it is in memory at once, one tensor's worth each,
    plus the SVD factors (about 4-5 more tensors' worth at the peak; the task vectors are
    computed one at a time).
    """
    b = base.to(work_dtype(base.dtype))
    taus = LazyTaskVectors(b, models, weights)
    excluded = any(fnmatch.fnmatchcase(key, pattern) for pattern in params.exclude_keys)
    if b.dim() == 2 and b.numel() > 0 and not excluded:
        delta = merge(taus, params)
    else:
        delta = mean_delta(taus)
    return delta.mul_(float(params.scaling)).add_(b).to(base.dtype)


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
    from paint.types import is_image_tower_key
    from paint.weights.blocks import block_of

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

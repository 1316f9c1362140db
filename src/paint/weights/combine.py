"""The maths of the merge methods, one row chunk at a time (the registry is :mod:`paint.weights.methods`).

- :func:`linear_merge`: weighted average (PAINT, WiSE-FT, uniform soup);
- :func:`delta_prepare` / :func:`delta_combine`: mergekit's generalized task arithmetic, whose
  settings are task arithmetic, TIES, DARE and DARE-TIES (sparsify each task vector, weight
  it, optionally elect signs, combine);
- :func:`model_stock_prepare` / :func:`model_stock_merge`: Model Stock;
- :func:`subspace_combine`: the frame of the SVD merges (the maths is :mod:`paint.weights.subspace`).

The merge of a chunk runs once per 4 MiB of every input, so it is written for speed without
changing a bit of the result: in-place operations on the method's own temporaries (each
fresh chunk-sized tensor costs page faults), and float arithmetic instead of boolean masks
where both give the same bits (on one core ``torch.where`` on a mask costs about 5 ns an
entry, a multiply 0.15 ns). Each shortcut says why it is exact; the tests compare every
method with its plain definition bit for bit.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from paint.errors import PaintError
from paint.weights.chunks import ChunkSource, OrderedSum, work_dtype
from paint.weights.method_params import LinearParams, NoParams
from paint.weights.ops import lerp_tensor
from paint.weights.sparsify import magnitude_trim, random_drop, tensor_seed
from paint.weights.subspace import LazyTaskVectors, mean_delta

Prepare = Callable[[ChunkSource, int, Sequence[float], Any, str], Any]
Combine = Callable[[torch.Tensor, Sequence[torch.Tensor], Sequence[float], Any, str, Any], torch.Tensor]


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


def _tau_chunks(source: ChunkSource, i: int) -> Callable[[], Iterator[torch.Tensor]]:
    """Model i's task-vector chunks ``theta_i - base`` in the work dtype, fresh at each call."""

    def chunks() -> Iterator[torch.Tensor]:
        for b, m in zip(source(0), source(i + 1)):
            wd = work_dtype(b.dtype)
            yield torch.sub(m.to(wd), b.to(wd))

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


def _as_float32(w: float) -> float:
    """``w`` rounded to float32, as ``torch.where(mask, w, 0.0)`` stores it."""
    return torch.tensor(float(w), dtype=torch.float32).item()


def _consensus_masked(
    taus: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool, positive: torch.Tensor
) -> torch.Tensor:
    """TIES' combine by boolean masks: the definition, used where a task vector holds NaN."""
    mixed = torch.zeros_like(taus[0])
    divisor = torch.zeros_like(taus[0]) if normalize else None
    for t, w in zip(taus, weights):
        agree = torch.where(positive, t > 0, t < 0)  # a zero (or NaN) entry never agrees
        mixed += torch.where(agree, t, 0.0)
        if divisor is not None:
            divisor += torch.where(agree, float(w), 0.0)
    if divisor is not None:
        mixed /= divisor.masked_fill_(divisor == 0, 1.0)
    return mixed


def _nonzero_divisor(divisor: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """``divisor`` with its zeros (no model agrees) replaced by a value that leaves ``0 / d`` at +0.

    With positive weights every non-zero entry is a sum of them, so at least the smallest one:
    clamping to it changes the zeros only, where the mixed sum is +0 and ``+0 / d == +0 / 1``.
    Otherwise the zeros become 1, as the definition says.
    """
    w32 = [_as_float32(w) for w in weights]
    if min(w32) > 0.0:
        return divisor.clamp_min_(min(w32))
    return divisor.masked_fill_(divisor == 0, 1.0)


def _consensus(taus: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool) -> torch.Tensor:
    """TIES: elect each entry's sign by summed mass (>= 0 elects +), keep the models that agree.

    With ``sign`` = +1 where the mass is >= 0 and -1 elsewhere, a model agrees exactly where
    ``t * sign > 0`` (a zero entry never does), and ``max(t * sign, 0) * sign`` is ``t`` there
    and a zero elsewhere: both products are exact, and adding a signed zero to the mixed sum
    (never -0) changes nothing, so the result is the masked definition's bit for bit. A NaN
    would not survive that arithmetic as the masks treat it, so a chunk holding one takes the
    masks (:func:`_consensus_masked`).
    """
    mass = taus[0] + taus[1] if len(taus) > 1 else taus[0].clone()
    for t in taus[2:]:
        mass += t
    if math.isnan(float(mass.sum())):  # some task vector holds NaN (or opposite infinities)
        return _consensus_masked(taus, weights, normalize, mass >= 0)
    # copysign makes -0.0 elect -, where >= 0 elects +: harmless, as every tau of that entry is then a zero.
    sign = torch.ones_like(mass).copysign_(mass)
    del mass
    mixed = torch.zeros_like(taus[0])
    divisor = torch.zeros_like(taus[0]) if normalize else None
    for t, w in zip(taus, weights):
        along = F.threshold_(t * sign, 0.0, 0.0)  # |t| where t agrees, +0 elsewhere
        mixed.addcmul_(along, sign)
        if divisor is not None:
            divisor.add_(along.sign_(), alpha=_as_float32(w))  # + w where it agrees
    if divisor is not None:
        mixed /= _nonzero_divisor(divisor, weights)
    return mixed


def _weighted_taus(
    base: torch.Tensor, models: Sequence[torch.Tensor], weights: Sequence[float], state: Sequence[Any]
) -> Iterator[torch.Tensor]:
    """``w_i * sparsify_i(theta_i - base)`` in the work dtype, one model at a time (each a fresh tensor)."""
    wd = work_dtype(base.dtype)
    b = base.to(wd)
    for m, w, sparsifier in zip(models, weights, state):
        tau = torch.sub(m.to(wd), b)
        yield (tau if sparsifier is None else sparsifier(tau)).mul_(float(w))


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
    taus = _weighted_taus(base, models, weights, state)
    if sign_consensus:
        mixed = _consensus(list(taus), weights, params.normalize)
    else:
        mixed = next(taus)  # a fresh tensor: summed into in place
        for t in taus:
            mixed += t
        total = float(sum(weights))
        if params.normalize and abs(total) >= 1e-8:
            mixed /= total
    if params.scaling != 1.0:
        mixed *= float(params.scaling)
    return mixed.add_(base.to(mixed.dtype)).to(base.dtype)  # mixed + base == base + mixed, bit for bit


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
        b = rows[0].to(wd)
        taus = [torch.sub(m.to(wd), b) for m in rows[1:]]
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
    mean = models[0].to(wd) + models[1].to(wd) if len(models) > 1 else models[0].to(wd).clone()
    for m in models[2:]:
        mean += m.to(wd)
    mean /= len(models)
    return mean.mul_(state).add_(base.to(wd) * (1.0 - state)).to(base.dtype)


# ---------------------------------------------------------------------------- SVD merges (Iso-C, Iso-CTS, TSV-M)


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
        try:
            delta = merge(taus, params)
        except torch.linalg.LinAlgError:
            raise PaintError(f"tensor {key!r}: an SVD did not converge, in float32 nor float64; exclude it") from None
    else:
        delta = mean_delta(taus)
    return delta.mul_(float(params.scaling)).add_(b).to(base.dtype)

"""RegMean's closed form (Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models",
arXiv:2212.09849): pure tensor maths, no model and no data.

A linear layer ``y = x W^T`` (``W``: ``(out, in)``) of model ``i`` saw the inputs ``X_i``
(one row per token or image) on its own task. RegMean picks the merged weight that best
reproduces every model's outputs on its own inputs,

    W* = argmin_W  sum_i || X_i W^T - X_i W_i^T ||^2,

whose solution needs only the Gram matrices ``G_i = X_i^T X_i`` (``in x in``):

    W*^T = (sum_i G~_i)^-1  sum_i G~_i W_i^T,   i.e.   W* = (sum_i W_i G~_i) (sum_i G~_i)^-1,

where ``G~_i`` keeps ``G_i``'s diagonal and scales its off-diagonal entries by ``alpha``
(the paper's regularising reduction: ``alpha = 1`` is the least-squares solution above,
``alpha = 0`` weights each input dimension ``j`` by ``G_i[j, j]``, a per-dimension weighted
mean). Every other tensor (biases, norms, embeddings, any weight without a Gram matrix) is the
plain mean of the models, as the paper does.

The solve is anchored at the models' mean: ``W* = mean + R A^-1`` with ``A = sum_i G~_i`` and
``R = sum_i W_i G~_i - mean A``. It equals the formula above when ``A`` is invertible, and
otherwise (an input dimension that no model ever activates, ``alpha = 1`` with fewer rows
than inputs) gives the minimiser closest to the mean instead of an error or a blow-up: a
never-activated dimension keeps the mean's column, and a singular ``A`` uses its
pseudo-inverse.

In a streamed merge (:data:`paint.weights.methods.METHODS`, ``regmean``) a weight with a Gram
matrix is merged whole in the method's first pass (its ``N`` weights and Gram matrices in
float64; the row chunks then hand out its rows in order), so the result does not depend on
the chunking; :func:`with_grams` binds the Gram matrices, which
:mod:`paint.pipeline.regmean` gathers from forward passes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from paint.config import StrictModel
from paint.errors import PaintError
from paint.weights.chunks import ChunkSource, work_dtype

Grams = Sequence[Mapping[str, torch.Tensor]]
"""One mapping per model: a linear layer's weight key (``...q_proj.weight``) -> its ``(in, in)`` Gram matrix."""


class RegMeanParams(StrictModel):
    """RegMean: the closed-form merge of linear layers from Gram matrices of their inputs (mean elsewhere)."""

    alpha: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="scale of the Gram matrices' off-diagonal entries (1: least squares, 0: per-input-dimension mean)",
    )
    n_images: int = Field(
        256, ge=1, description="images of each model's task (train split) that give its Gram matrices"
    )
    batch_size: int = Field(64, ge=1, description="images per forward pass while gathering the Gram matrices")
    seed: int = Field(0, ge=0, description="seed of the images drawn from each model's train split")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the forward passes run (auto: a GPU if any)"
    )


def reduce_gram(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """``G~``: the diagonal of ``gram`` kept, its off-diagonal entries scaled by ``alpha`` (float64).

    Scaled in place in one float64 copy (a 4096 x 4096 Gram matrix is 128 MiB of it).
    """
    out = gram.to(torch.float64, copy=True)
    if alpha == 1.0:
        return out
    diagonal = out.diagonal().clone()
    out.mul_(alpha).diagonal().copy_(diagonal)
    return out


def _solve_right(r: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``R A^-1`` for a symmetric positive semi-definite ``A`` (Cholesky; the pseudo-inverse when singular)."""
    factor, info = torch.linalg.cholesky_ex(a)
    pivots = factor.diagonal().square()
    tol = a.shape[0] * torch.finfo(a.dtype).eps * float(a.diagonal().max())
    if int(info) == 0 and float(pivots.min()) > tol:
        return torch.cholesky_solve(r.T, factor).T  # A symmetric: (A^-1 R^T)^T = R A^-1
    return r @ torch.linalg.pinv(a, hermitian=True)


def regmean_combine(weights: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """RegMean's merged weight ``(sum_i W_i G~_i)(sum_i G~_i)^-1`` of one linear layer.

    Args:
        weights: each model's weight ``W_i``, shape ``(out, in)`` (same shape and dtype).
        grams: each model's Gram matrix ``G_i = X_i^T X_i`` of that layer's inputs, ``(in, in)``.
        alpha: scale of the off-diagonal entries, in ``[0, 1]`` (the paper's reduction; 0.9 by default in paint).

    Returns:
        The merged ``(out, in)`` weight in the weights' dtype, computed in float64. With ``alpha = 1`` it is
        the least-squares solution of ``min_W sum_i ||X_i W^T - X_i W_i^T||^2``.

    Example:
        >>> import torch
        >>> from paint.weights.regmean import regmean_combine
        >>> w = [torch.ones(2, 3), 3 * torch.ones(2, 3)]
        >>> regmean_combine(w, [torch.eye(3), torch.eye(3)], alpha=0.9)  # equal Gram matrices: the mean
        tensor([[2., 2., 2.],
                [2., 2., 2.]], dtype=torch.float32)
    """
    if not weights or len(weights) != len(grams):
        raise PaintError(f"regmean needs one Gram matrix per weight, got {len(weights)} weights and {len(grams)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise PaintError(f"regmean alpha must be in [0, 1], got {alpha}")
    shape = tuple(weights[0].shape)
    if len(shape) != 2:
        raise PaintError(f"regmean merges 2-D (out, in) weights, got shape {shape}")
    for i, w in enumerate(weights):
        if tuple(w.shape) != shape:
            raise PaintError(f"regmean: weight {i} has shape {tuple(w.shape)}, weight 0 has {shape}")
    f64 = torch.float64
    mean = torch.zeros(shape, dtype=f64)
    for w in weights:
        mean += w.to(f64)
    mean /= len(weights)
    a = torch.zeros(shape[1], shape[1], dtype=f64)
    r = torch.zeros(shape, dtype=f64)
    for i, w in enumerate(weights):
        g = grams[i]  # looked up once and dropped after use: a lazy sequence holds one Gram matrix at a time
        if tuple(g.shape) != (shape[1], shape[1]):
            raise PaintError(
                f"regmean: Gram matrix {i} has shape {tuple(g.shape)}; a {shape} weight needs {(shape[1],) * 2}"
            )
        reduced = reduce_gram(g, float(alpha))
        del g
        a += reduced
        r += (w.to(f64) - mean) @ reduced  # sum_i W_i G~_i - mean A, summed without cancelling large terms
        del reduced
    dead = a.diagonal() <= 0  # an input dimension no model activated: its column of R is 0, keep the mean's
    if bool(dead.all()):
        return mean.to(weights[0].dtype)
    if bool(dead.any()):
        a.diagonal()[dead] = 1.0
    return (mean + _solve_right(r, a)).to(weights[0].dtype)


# ---------------------------------------------------------------------------- as a streamed merge method


class GramsOf(Sequence[torch.Tensor]):
    """Every model's Gram matrix of one weight, each looked up when it is used (a file-backed mapping reads it then)."""

    def __init__(self, grams: Grams, key: str):
        self.grams, self.key = grams, key

    def __len__(self) -> int:
        return len(self.grams)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        return self.grams[i][self.key]


@dataclasses.dataclass
class MergedRows:
    """A tensor merged whole in the first pass, handed out row chunk by row chunk in order."""

    tensor: torch.Tensor
    start: int = 0

    def take(self, n: int) -> torch.Tensor:
        rows = self.tensor[self.start : self.start + n]
        self.start += n
        return rows


def regmean_prepare(
    source: ChunkSource,
    n_models: int,
    weights: Sequence[float],
    params: RegMeanParams,
    key: str,
    *,
    grams: Grams | None,
) -> MergedRows | None:
    """Merge ``key`` whole when it has Gram matrices (None: the combine takes the plain mean)."""
    if grams is None:
        raise PaintError(
            "method 'regmean' needs each model's Gram matrices, gathered on its task: run it through `paint merge` "
            "(or paint.pipeline.merge.run_merge) with a task per model"
        )
    if len(grams) != n_models:
        raise PaintError(f"regmean: {n_models} models but Gram matrices of {len(grams)}")
    having = [key in g for g in grams]
    if not any(having):
        return None
    if not all(having):
        raise PaintError(f"regmean: model {having.index(False)} has no Gram matrix for {key!r}, model 0 has one")
    ws = [torch.cat(list(source(i + 1))) for i in range(n_models)]
    try:
        merged = regmean_combine(ws, GramsOf(grams, key), params.alpha)
    except PaintError as e:
        raise PaintError(f"tensor {key!r}: {e}") from None
    return MergedRows(merged)


def regmean_merge(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    weights: Sequence[float],
    params: RegMeanParams,
    key: str,
    state: MergedRows | None,
) -> torch.Tensor:
    """One row chunk: the next rows of the RegMean solution, or the plain mean of the models without one."""
    if state is not None:
        return state.take(models[0].shape[0]).to(base.dtype)
    wd = work_dtype(models[0].dtype)
    acc = models[0].to(wd).clone()
    for m in models[1:]:
        acc += m.to(wd)
    acc /= len(models)
    return acc.to(base.dtype)


def with_grams(method: Any, grams: Grams) -> Any:
    """The ``regmean`` registry entry with every model's Gram matrices bound (one mapping per model)."""
    if getattr(method, "name", None) != "regmean":
        raise PaintError(f"Gram matrices are for method 'regmean', not {getattr(method, 'name', method)!r}")
    return dataclasses.replace(method, prepare=functools.partial(regmean_prepare, grams=list(grams)))

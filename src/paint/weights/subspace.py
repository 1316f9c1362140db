"""Task-vector merges in singular-vector subspaces: Iso-C, Iso-CTS and TSV-M, one 2-D tensor at a time.

Each function takes the (weighted) task vectors ``tau_i = theta_i - base`` of ONE 2-D tensor,
all in the same float dtype, and returns the merged task vector (before any scaling), with
fusion_bench's semantics (``fusion_bench.method.isotropic_merging.iso_utils`` and
``fusion_bench.method.task_singular_vector.utils.TSVM_utils``, 0.2.33). Tensors that are not
2-D are merged by :func:`mean_delta`, as fusion_bench does.

An SVD needs the whole matrix, so these merges see every model's whole tensor at once (one
tensor's worth per model plus its factors, never a whole checkpoint); see
:attr:`paint.weights.methods.MergeMethod.whole_tensor`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch


class TaskVectors(Protocol):
    """One tensor's task vectors, iterable (more than once) and counted: a list, or
    :class:`LazyTaskVectors`. None of them is modified."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[torch.Tensor]: ...


class LazyTaskVectors:
    """One tensor's weighted task vectors ``w_i * (theta_i - base)``, each computed as it is iterated.

    At most one is alive at a time beside the inputs; a merge that reads them twice (Iso-CTS)
    recomputes them, bit for bit the same, rather than holding N more tensor-sized copies.
    ``base`` is in the work dtype; each model is cast to it.
    """

    def __init__(self, base: torch.Tensor, models: Sequence[torch.Tensor], weights: Sequence[float]) -> None:
        self.base, self.models, self.weights = base, models, weights

    def __len__(self) -> int:
        return len(self.models)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for m, w in zip(self.models, self.weights):
            yield (m.to(self.base.dtype) - self.base).mul_(float(w))


def _sum(taus: TaskVectors) -> torch.Tensor:
    total = None
    for t in taus:
        total = t.clone() if total is None else total.add_(t)
    assert total is not None, "no task vectors"
    return total


def mean_delta(taus: TaskVectors) -> torch.Tensor:
    """The mean of the task vectors (fusion_bench's merge of tensors that are not 2-D, or excluded)."""
    return _sum(taus).div_(len(taus))


def svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.linalg.svd(a, full_matrices=False)``, again in float64 where LAPACK does not converge.

    LAPACK's divide and conquer can fail on a float32 matrix whose singular values cluster (as
    :func:`orthonormal_factor` also allows for); float64 converges there, and the factors come back
    in ``a``'s dtype. A matrix on which the float64 SVD fails too raises ``torch.linalg.LinAlgError``.
    """
    try:
        return torch.linalg.svd(a, full_matrices=False)
    except torch.linalg.LinAlgError:
        if a.dtype == torch.float64:
            raise
        u, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
        return u.to(a.dtype), s.to(a.dtype), vh.to(a.dtype)


def orthonormal_factor(a: torch.Tensor) -> torch.Tensor:
    """``U V^T`` from ``a = U S V^T``: the orthonormal matrix nearest to ``a`` (its polar factor).

    TSV-M and Iso-CTS "decorrelate" stacked singular vectors this way: for a matrix whose
    columns are nearly orthonormal already it moves them least.
    """
    try:
        u, _, vh = torch.linalg.svd(a, full_matrices=False)
    except torch.linalg.LinAlgError:  # LAPACK's divide and conquer fails on repeated singular values
        u, _, vh = torch.linalg.svd(a.double(), full_matrices=False)  # (e.g. identical task vectors)
        return (u @ vh).to(a.dtype)
    return u @ vh


def iso_c_delta(taus: TaskVectors) -> torch.Tensor:
    """Iso-C: the summed task vectors with their spectrum made isotropic.

    ``sum_i tau_i = U S V^T`` -> ``U (mean(S) I) V^T``: the singular vectors of the sum,
    every singular value replaced by their mean (so the merged delta has equal singular values).
    """
    u, s, vh = svd(_sum(taus))
    return u.mul_(s.mean()) @ vh


def iso_cts_split(rank: int, n_tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """Iso-CTS's ``(common, per_task)`` directions for a matrix of rank ``rank`` (``min(rows, cols)``).

    fusion_bench's arithmetic: ``common = int(rank * fraction)``, then the task-specific
    remainder is rounded (Python's ``round``, half to even) to a multiple of the number of
    tasks and ``common`` takes what is left, so that ``common + n_tasks * per_task == rank``.
    Where that rounding overshoots the rank (a small ``common`` and many tasks: e.g. fraction 0
    with 14 tasks on rank 768) fusion_bench's common size turns negative: it then fails, or on
    tiny matrices silently drops the last tasks' and the common directions. paint gives each
    task ``rank // n_tasks`` directions there and the common subspace the rest.
    """
    common = int(rank * common_space_fraction)
    per_task = round((rank - common) / n_tasks)
    if per_task * n_tasks > rank:
        per_task = rank // n_tasks
    return rank - per_task * n_tasks, per_task


def iso_cts_delta(taus: TaskVectors, common_space_fraction: float) -> torch.Tensor:
    """Iso-CTS: a common subspace plus each task's own subspace, orthogonalised, isotropic spectrum.

    1. the top ``common`` singular triplets of ``sum_i tau_i`` (:func:`iso_cts_split`);
    2. for each task, the top ``per_task`` singular triplets of its residual
       ``tau_i - U_c U_c^T tau_i`` (what the common subspace does not explain);
    3. the stacked left vectors ``[U_1 .. U_T, U_c]`` and right vectors are each replaced by
       their nearest orthonormal matrix (:func:`orthonormal_factor`), every singular value by the
       mean of all the stacked ones: ``U' (mean(S) I) V'^T``.

    The projection is computed as ``U_c (U_c^T tau_i)``, never forming the ``rows x rows``
    projector (fusion_bench forms it: the same result, but 9.8 GB for CLIP's token embedding).
    """
    total = _sum(taus)
    common, per_task = iso_cts_split(min(total.shape), len(taus), common_space_fraction)
    u, s, vh = svd(total)
    del total
    u_c, s_c, vh_c = u[:, :common].clone(), s[:common], vh[:common]
    del u
    us, ss, vhs = [], [], []
    for tau in taus:
        residual = tau - u_c @ (u_c.T @ tau)
        del tau
        u_t, s_t, vh_t = svd(residual)
        del residual
        us.append(u_t[:, :per_task].clone())  # a copy: the slice would keep all of u_t alive
        ss.append(s_t[:per_task])
        vhs.append(vh_t[:per_task])
        del u_t
    u_all = orthonormal_factor(torch.cat([*us, u_c], dim=1))
    del us, u_c
    vh_all = orthonormal_factor(torch.cat([*vhs, vh_c], dim=0))
    return u_all.mul_(torch.cat([*ss, s_c]).mean()) @ vh_all


def tsv_rank(rank: int, n_tasks: int, rank_fraction: float) -> int:
    """TSV-M's singular components kept per task: ``int(rank * (rank_fraction / n_tasks))`` (fusion_bench's
    ``int(rank * (1 / n_tasks))`` at the default fraction 1); 0 when the matrix has fewer than
    ``n_tasks / rank_fraction`` rows or columns."""
    return int(rank * (rank_fraction / n_tasks))


def tsv_m_delta(taus: TaskVectors, rank_fraction: float) -> torch.Tensor:
    """TSV-M: each task's top-k singular components, stacked, decorrelated, reconstructed.

    With ``k = tsv_rank(...)``: ``tau_i ~ U_i S_i V_i^T`` (top k); ``U = [U_1 .. U_T]``,
    ``S = [S_1 .. S_T]``, ``V = [V_1 .. V_T]``; the merged delta is
    ``orth(U) diag(S) orth(V)^T`` with ``orth`` the nearest orthonormal matrix
    (:func:`orthonormal_factor`). With one task and ``k`` the full rank it is ``tau_1``
    itself. With ``k == 0`` the delta is zero, as in fusion_bench (its stacked factors are all
    zero there).
    """
    us, ss, vhs = [], [], []
    k = -1
    for tau in taus:
        if k < 0:
            k = tsv_rank(min(tau.shape), len(taus), rank_fraction)
            if k == 0:
                return torch.zeros_like(tau)
        u, s, vh = svd(tau)
        del tau
        us.append(u[:, :k].clone())  # a copy: the slice would keep all of u alive
        ss.append(s[:k])
        vhs.append(vh[:k])
        del u
    u_all = orthonormal_factor(torch.cat(us, dim=1))
    del us
    vh_all = orthonormal_factor(torch.cat(vhs, dim=0))
    return u_all.mul_(torch.cat(ss)) @ vh_all

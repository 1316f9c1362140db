"""Choosing per-block coefficients on a task pool: the glue between the pool, the functional forward and selection.

``choose`` (:mod:`paint.pipeline.operation`) hands ``strategy: lines | blockwise`` and
``objective: entropy`` here. The coefficients live in a :class:`paint.evaluation.functional.BlockBasis`
(one vector of per-block alphas per task vector); measurements run the one loaded model through
``functional_call`` on validation, gradient steps on a sample of it; the search itself is the
pure code of :mod:`paint.selection.blockwise`.

With ``objective: entropy`` the patching tasks' labels are replaced by -1 before the search sees
them: the choice is label-free on the patching task. Their validation accuracy is measured only
afterwards, along the single-alpha grid, for the report's sweep table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from paint.evaluation.functional import BlockBasis, PenalisedLoss, TaskData, measure_state
from paint.evaluation.results import ResultKey
from paint.pipeline.pool import Line, TaskPool, state_id, sweep_point
from paint.progress import counter, ticking
from paint.selection import SelectionConfig
from paint.selection.blockwise import (
    BlockSearchResult,
    VectorEvaluator,
    block_objective,
    search_blockwise,
    search_diagonal,
    search_lines,
)
from paint.selection.objectives import TaskMetrics
from paint.types import StateDict
from paint.weights.blocks import block_depths


def task_data(pool: TaskPool, names: Sequence[str], split: str, hide_labels: bool = False) -> list[TaskData]:
    """The pool's tasks as :class:`TaskData`; ``hide_labels`` sets every label to -1 (unknown)."""
    out = []
    for n in names:
        t = pool.task(n)
        labels = np.full(len(t.labels[split]), -1) if hide_labels else np.asarray(t.labels[split])
        out.append(TaskData(n, t.images[split], labels, t.head))
    return out


def basis_id(basis: BlockBasis) -> str:
    """The results-store id of a coefficient space: theta_zs and every fine-tuned tower, by content."""
    return "blocks-" + "-".join(state_id(t) for t in [basis.theta_zs, *basis.thetas])


def stored_measure(
    pool: TaskPool, basis: BlockBasis, data: Sequence[TaskData], x: Sequence[float], label_free: bool
) -> TaskMetrics:
    """Validation metrics at coefficients ``x``, each task's record kept in the pool's results store.

    The key holds the coefficients and whether the patching labels were hidden, so a resumed run
    (or another strategy on the same fine-tunes) reads a measured point instead of measuring it again.
    """
    key = f"{basis_id(basis)}{'/label-free' if label_free else ''}/" + ",".join(f"{a:.10g}" for a in x)
    recs = {d.name: pool.store.get(ResultKey(key, 0.0, d.name, "val")) for d in data}
    missing = [d for d in data if recs[d.name] is None]
    if missing:
        measured = measure_state(pool.model, basis.state(x), missing, pool.spec, pool.batch_size)
        for d in missing:
            recs[d.name] = pool.store.put(ResultKey(key, 0.0, d.name, "val"), measured[d.name])
    fields = ("accuracy", "loss", "entropy", "n")
    return {n: {f: r[f] for f in fields if f in r} for n, r in recs.items()}


def _search(
    ev: Any, cfg: SelectionConfig, basis: BlockBasis, pool: TaskPool, p_data: Any, s_data: Any, label_free: bool
):
    """(result, free coefficients, gradient oracle or None) of the per-block strategy ``cfg`` names."""
    if cfg.strategy == "lines":
        depths = list(block_depths(basis.blocks).values())
        return search_lines(ev, depths, cfg, basis.n_vectors), 2, None  # one line shared by every task vector
    if cfg.strategy == "blockwise":
        bw = cfg.blockwise
        oracle = PenalisedLoss(
            pool.model, basis, pool.spec, p_data, s_data, label_free, bw.support_loss, bw.batch, bw.seed
        )
        return search_blockwise(ev, oracle, cfg, basis.n_vectors), basis.size, oracle
    # grid with the entropy objective: the single-alpha grid through the vector measure
    return search_diagonal(ev, cfg, basis.n_vectors), basis.n_vectors, None


def search_blocks(
    pool: TaskPool,
    basis: BlockBasis,
    cfg: SelectionConfig,
    patch: Sequence[str],
    support: Sequence[str],
    reference: TaskMetrics | None = None,
) -> tuple[BlockSearchResult, dict[str, Any]]:
    """Run ``cfg``'s per-block strategy on ``basis`` over the pool's validation splits; (result, cost record)."""
    label_free = cfg.objective == "entropy"
    p_data = task_data(pool, patch, "val", hide_labels=label_free)
    s_data = task_data(pool, support, "val")
    data = p_data + s_data

    t0 = time.time()
    # lines and blockwise run for minutes: every validation evaluation advances the progress line
    with counter(f"choose per-block alphas ({cfg.strategy}, val)", total=cfg.max_evals()) as bar:
        measure = ticking(lambda x: stored_measure(pool, basis, data, x, label_free), bar)
        ev = VectorEvaluator(measure, block_objective(cfg, patch, support), basis.size, cfg.max_evals(), reference)
        result, free, oracle = _search(ev, cfg, basis, pool, p_data, s_data, label_free)
    n_val = sum(len(d.labels) for d in data)
    cost = {
        "free_coefficients": free,
        "blocks": basis.blocks,
        "validation_evaluations": result.n_model_evals,
        "gradient_steps": result.n_grad_evals,
        "images_forward_backward": 0 if oracle is None else oracle.n_images,
        "images_forward": result.n_model_evals * n_val,
        "wall_s": round(time.time() - t0, 2),
        "label_free_patch": label_free,
    }
    return result, cost


def diagonal_sweep(
    pool: TaskPool, basis: BlockBasis, result: BlockSearchResult, line_id: str | None, label_free: bool
) -> list[dict[str, Any]]:
    """The sweep rows of the single-alpha points (every block equal) the search measured, in alpha order.

    With hidden patching labels the rows are re-measured on the labelled validation splits (a
    report-only cost; the choice is already made). Always includes alpha 0.
    """
    diag = {e.alphas[0]: e.metrics for e in result.evaluations if len(set(e.alphas)) == 1}
    diag.setdefault(0.0, None)
    rows = []
    for a in sorted(diag):
        m = diag[a]
        if m is None or label_free or any("accuracy" not in v for v in m.values()):
            if basis.n_vectors == 1 and line_id is not None:
                m = pool.evaluate_line(Line(basis.theta_zs, basis.thetas[0], line_id), a, "val")
            else:
                m = pool.evaluate_state(basis.state([a] * basis.size), "val")
        rows.append(sweep_point(a, m))
    return rows


def block_record(result: BlockSearchResult, basis: BlockBasis, cost: dict[str, Any]) -> dict[str, Any]:
    """The ``selection.search`` entry of a per-block choice: alphas per block, cost, history."""
    rec = result.to_dict()
    rec["block_alphas"] = basis.alphas_of(result.alphas)
    rec.update(cost)
    rec["evaluated"] = [
        {"alphas": list(e.alphas), "source": e.source, "value": e.value, "feasible": e.feasible}
        for e in result.evaluations
    ]
    return rec


def basis_for(theta_zs: StateDict, thetas: Sequence[StateDict]) -> BlockBasis:
    """The per-block coefficient space from theta_zs towards each fine-tuned tower."""
    return BlockBasis(theta_zs, list(thetas))

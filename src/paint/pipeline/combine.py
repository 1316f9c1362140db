"""The combine step of parallel patching: N fine-tunes of theta_zs -> one image tower, coefficients chosen on validation.

``paint multitask`` (``modes: [parallel]``, setting ``combine``) and the merging benchmark
(``benchmarks/bench_merging.py``) both call :func:`combine_parallel`: one definition of how a
merge's coefficients are chosen.

- ``method: per_task`` (the default; PAINT's parallel patching): theta_zs + sum_i alpha_i tau_i,
  tau_i = theta_i - theta_zs, the alpha vector searched coordinate by coordinate with the run's
  selection (``sweeps`` passes, each coordinate a line search); with a per-block strategy
  (``lines``, ``blockwise``, ``entropy``) one vector of per-block alphas per task: layer-wise
  AdaMerging (2310.02575), label-free with ``objective: entropy``.
- ``method: <a merge method>`` (:data:`paint.weights.methods.METHODS`: task_arithmetic, ties,
  dare_ties, dare_task_arithmetic, iso_c, iso_cts, tsv_m, model_stock, regmean, linear): the
  method merges the N fine-tunes with ``parameters``; its one coefficient, lambda (``scaling``),
  is chosen on the validation splits as the methods' papers do. Every such merge is
  ``theta_zs + lambda * Delta`` with Delta independent of lambda (TIES' trim and sign election,
  DARE's seeded drop and the SVD merges' spectra are computed before the scaling), so the
  candidates lie on the line theta_zs -> merge(lambda_max): the run's selection chooses
  alpha = lambda / lambda_max on it, with its objective and support bound, and the grid's points
  are ``scalings`` (default :func:`default_scalings`: the papers' ranges). With no support task and
  ``objective: mean_accuracy`` this is the papers' protocol: the lambda of highest mean validation
  accuracy over the merged tasks (ties to the smaller lambda). ``model_stock``, ``regmean`` and
  ``linear`` have no coefficient: their merge is taken as is unless ``scalings`` is given (then
  lambda scales the merge's task vector ``merge - theta_zs``). RegMean's Gram matrices come from
  each fine-tune on ``n_images`` of its own task's train split (:func:`pool_grams`, in memory).

A method's ``seed`` parameter (DARE's drop masks, RegMean's draw of images) follows the run's seed
(``combine_parallel(seed=...)``: ``paint multitask`` passes ``finetune.seed``, which ``seeds`` sets per
repetition), so that every seed of a study draws its own; a ``seed`` given in ``parameters`` wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from paint.config import StrictModel
from paint.errors import PaintError
from paint.pipeline.operation import Choice, choose, choose_blocks, chosen_state
from paint.pipeline.pool import Line, TaskPool
from paint.pipeline.regmean import TRAIN_SPLIT, gather_grams, sample_indices
from paint.selection import SelectionConfig
from paint.selection.blockwise import is_block_choice
from paint.selection.objectives import TaskMetrics
from paint.types import StateDict
from paint.weights.blocks import add_block_task_vectors, mean_alpha
from paint.weights.methods import METHODS, MergeMethod, get_method
from paint.weights.ops import add_task_vectors, task_vector
from paint.weights.regmean import RegMeanParams, with_grams

PER_TASK = "per_task"
COMBINE_METHODS: tuple[str, ...] = (PER_TASK, *METHODS)
# Task arithmetic and DARE sum the task vectors: their papers search lambda in (0, 1]. TIES (a disjoint
# mean: its paper searches 0.8..1.8) and the SVD merges (Iso-C, Iso-CTS, TSV-M: published value 1.0 on
# a flattened spectrum) put it at 1 or above: their grid brackets 1 widely.
SUM_SCALINGS: tuple[float, ...] = tuple(round(0.1 * i, 2) for i in range(1, 11))  # 0.1 .. 1.0
WIDE_SCALINGS: tuple[float, ...] = tuple(round(0.2 * i, 2) for i in range(1, 16))  # 0.2 .. 3.0
WIDE_METHODS: tuple[str, ...] = ("ties", "iso_c", "iso_cts", "tsv_m")
MAX_SCALING = 100.0  # the registry's bound on ``scaling``


def has_scaling(method: MergeMethod) -> bool:
    """Whether the method's parameters include the coefficient lambda (``scaling``)."""
    return "scaling" in method.params.model_fields


def default_scalings(name: str) -> tuple[float, ...] | None:
    """The lambda grid of a method's paper: 0.2..3.0 for TIES and the SVD merges, 0.1..1.0 for the summing
    merges; None for a method without a coefficient (its merge as is) and for ``per_task``."""
    if name == PER_TASK or not has_scaling(get_method(name)):
        return None
    return WIDE_SCALINGS if name in WIDE_METHODS else SUM_SCALINGS


class CombineConfig(StrictModel):
    """``combine``: how parallel patching merges its fine-tunes (see :mod:`paint.pipeline.combine`).

    Example:
        >>> from paint.pipeline.combine import CombineConfig
        >>> cfg = CombineConfig(method="tsv_m")
        >>> cfg.grid()[:3], cfg.grid()[-1]
        ([0.2, 0.4, 0.6], 3.0)
        >>> CombineConfig().method
        'per_task'
    """

    method: str = Field(
        PER_TASK,
        description=f"per_task (PAINT's parallel patching: one alpha per task, searched by the selection) or a merge "
        f"method whose one coefficient lambda is chosen on validation: {', '.join(METHODS)}",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="the merge method's parameters (as in paint merge), scaling excluded"
    )
    scalings: list[float] | None = Field(
        None,
        description="the lambdas the selection's grid tries (searches stay between 0 and the largest); "
        "null: the method's paper's range (0.1..1 summing merges, 0.2..3 TIES and SVD merges; none: the merge as is)",
    )

    @model_validator(mode="after")
    def _checks(self):
        if self.method not in COMBINE_METHODS:
            raise ValueError(f"unknown combine method {self.method!r}; choose one of: {', '.join(COMBINE_METHODS)}")
        if self.method == PER_TASK:
            if self.parameters or self.scalings is not None:
                raise ValueError(
                    "method per_task takes no parameters or scalings (its alphas come from selection); "
                    "name a merge method to set them"
                )
            return self
        if "scaling" in self.parameters:
            raise ValueError(
                f"scaling of method {self.method!r} is chosen on validation from combine.scalings; "
                "give scalings: [x] to fix it"
            )
        try:
            get_method(self.method).parse_params(self.parameters)
        except PaintError as e:
            raise ValueError(str(e)) from None
        if self.scalings is not None:
            if not self.scalings:
                raise ValueError("scalings must list at least one lambda (or be null: the method's paper's range)")
            bad = [s for s in self.scalings if not (math.isfinite(s) and 0.0 < s <= MAX_SCALING)]
            if bad:
                raise ValueError(f"scaling {bad[0]} is outside (0, {MAX_SCALING:g}]")
            if len(set(self.scalings)) != len(self.scalings):
                raise ValueError("a scaling is listed twice")
        return self

    def grid(self) -> list[float] | None:
        """The lambdas tried, increasing; None: no coefficient (the merge as is) or ``per_task``."""
        grid = self.scalings if self.scalings is not None else default_scalings(self.method)
        return None if grid is None else sorted(float(s) for s in grid)

    def method_parameters(self, seed: int | None = None) -> dict[str, Any]:
        """``parameters``, with the run's ``seed`` where the method takes one and ``parameters`` gives none.

        Example:
            >>> from paint.pipeline.combine import CombineConfig
            >>> CombineConfig(method="dare_ties").method_parameters(seed=3)
            {'seed': 3}
            >>> CombineConfig(method="dare_ties", parameters={"seed": 7}).method_parameters(seed=3)
            {'seed': 7}
        """
        params = dict(self.parameters)
        if seed is not None and self.method != PER_TASK and "seed" in get_method(self.method).params.model_fields:
            params.setdefault("seed", seed)
        return params

    def check_run(self, modes: Sequence[str], n_tasks: int, parallel_sweeps: int = 1) -> None:
        """Raise :class:`ValueError` when a run's ``modes``, patching tasks or sweeps cannot take this combine step."""
        if self.method == PER_TASK:
            return
        if "parallel" not in modes:
            raise ValueError(f"combine.method {self.method!r} is parallel mode's; add 'parallel' to modes")
        if parallel_sweeps != 1:
            raise ValueError("parallel_sweeps is for combine.method 'per_task' (a merge method has one lambda)")
        self.check_tasks(n_tasks)

    def check_tasks(self, n_tasks: int) -> None:
        """Raise :class:`ValueError` when the method cannot merge ``n_tasks`` fine-tunes."""
        if self.method != PER_TASK and n_tasks < get_method(self.method).min_models:
            raise ValueError(
                f"combine method {self.method!r} merges at least {get_method(self.method).min_models} fine-tunes; "
                f"there are {n_tasks} patching tasks"
            )


@dataclass(frozen=True)
class Chooser:
    """Where and how coefficients are chosen: the pool (validation splits), the selection, the task groups and
    the zero-shot reference metrics (None: alpha 0 of each line, which starts at theta_zs here)."""

    pool: TaskPool
    selection: SelectionConfig
    patch: Sequence[str]
    support: Sequence[str] = ()
    reference: TaskMetrics | None = None

    def on_line(self, line: Line, selection: SelectionConfig | None = None) -> Choice:
        """Alpha (or per-block alphas) on ``line`` with ``selection`` (default: the run's)."""
        cfg = selection or self.selection
        return choose(self.pool, line, cfg, list(self.patch), list(self.support), self.reference, per_block=True)


@dataclass
class Combined:
    """The combined tower and how it was chosen.

    Attributes:
        theta: the merged state (theta_zs's keys).
        alphas: one per task (per_task; a per-block vector's mean), or ``[lambda]`` (a merge method).
        choices: every choice made (one per coordinate line, or one).
        record: method, parameters, the lambda grid and the chosen lambda (a merge method).
    """

    theta: StateDict
    alphas: list[float]
    choices: list[Choice]
    record: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- per_task (PAINT's parallel)


def parallel_line(
    theta_zs: StateDict, thetas: Sequence[StateDict], alphas: Sequence[float], i: int
) -> tuple[StateDict, StateDict]:
    """The line along coordinate i: (theta with alpha_i = 0, theta with alpha_i = 1).

    When every other alpha is 0 the line is exactly theta_zs -> theta_i (no rounding), so
    parallel patching of one task reproduces single-task patching bit for bit.
    """
    others = [(j, a) for j, a in enumerate(alphas) if j != i and a != 0.0]
    if not others:
        return theta_zs, thetas[i]
    taus = [task_vector(theta_zs, thetas[j]) for j, _ in others]
    base = add_task_vectors(theta_zs, taus, [a for _, a in others])
    end = add_task_vectors(base, [task_vector(theta_zs, thetas[i])], [1.0])
    return base, end


def parallel_merge(theta_zs: StateDict, thetas: Sequence[StateDict], alphas: Sequence[float]) -> StateDict:
    """theta_zs + sum_i alpha_i (theta_i - theta_zs)."""
    return add_task_vectors(theta_zs, [task_vector(theta_zs, t) for t in thetas], list(alphas))


def search_parallel(
    chooser: Chooser, theta_zs: StateDict, thetas: Sequence[StateDict], sweeps: int = 1
) -> tuple[list[float], list[Choice], StateDict]:
    """Coordinate-wise search of the alpha vector; returns (alphas, choices, final theta)."""
    alphas = [0.0] * len(thetas)
    choices: list[Choice] = []
    theta = theta_zs
    for _ in range(sweeps):
        for i in range(len(thetas)):
            base, end = parallel_line(theta_zs, thetas, alphas, i)
            res = chooser.on_line(Line.between(base, end))
            alphas[i] = res.alpha
            choices.append(res)
            theta = Line.between(base, end).at(res.alpha)  # = parallel_merge(...) up to rounding
    return alphas, choices, theta


def combine_per_task(chooser: Chooser, theta_zs: StateDict, thetas: Sequence[StateDict], sweeps: int = 1) -> Combined:
    """One alpha per task (coordinate search), or one per-block vector per task with a per-block selection."""
    if is_block_choice(chooser.selection):  # layer-wise AdaMerging: every task's block vector searched together
        c = chooser
        res = choose_blocks(c.pool, thetas, theta_zs, c.selection, list(c.patch), list(c.support), c.reference)
        theta = add_block_task_vectors(theta_zs, [task_vector(theta_zs, t) for t in thetas], res.block_alphas)
        return Combined(theta, [mean_alpha(a) for a in res.block_alphas], [res], {"method": PER_TASK})
    alphas, choices, theta = search_parallel(chooser, theta_zs, thetas, sweeps)
    return Combined(theta, alphas, choices, {"method": PER_TASK, "sweeps": sweeps})


# ----------------------------------------------------------------------------- a merge method


def merge_states(method: MergeMethod, params: Any, theta_zs: StateDict, thetas: Sequence[StateDict]) -> StateDict:
    """Merge whole in-memory states tensor by tensor with the registry's method (integer tensors from theta_zs)."""
    weights = [1.0] * len(thetas)
    out = {}
    for k, base in theta_zs.items():
        if not base.is_floating_point():
            out[k] = base.clone()
            continue
        out[k] = method.fn(base, [t[k] for t in thetas], weights, params, k).contiguous()
    return out


def pool_grams(
    pool: TaskPool, theta_zs: StateDict, thetas: Sequence[StateDict], names: Sequence[str], params: RegMeanParams
) -> list[dict[str, torch.Tensor]]:
    """Each in-memory fine-tune's Gram matrices on ``params.n_images`` of its own pool task's train split.

    RegMean's data side for the combine step (:func:`paint.pipeline.regmean.gather_grams`): the pool's
    model runs each state in turn (on the pool's device; ``params.device`` is ``paint merge``'s), and ends
    at ``theta_zs``. Every fine-tune's Gram matrices stay in memory (small models; ``paint merge`` writes
    them to disk instead, :func:`paint.pipeline.regmean.stored_grams`).
    """
    out = []
    for theta, name in zip(thetas, names, strict=True):
        t = pool.task(name)
        if TRAIN_SPLIT not in t.images:
            raise PaintError(f"regmean needs the train split of {name!r}, which this pool did not prepare")
        idx = sample_indices(len(t.labels[TRAIN_SPLIT]), params.n_images, params.seed)
        pool.load(theta)
        images = torch.as_tensor(np.asarray(t.images[TRAIN_SPLIT][idx]))
        out.append(gather_grams(pool.model, images, pool.spec, params.batch_size).grams)
    pool.load(theta_zs)
    return out


def bound_method(
    cfg: CombineConfig,
    pool: TaskPool,
    theta_zs: StateDict,
    thetas: Sequence[StateDict],
    names: Sequence[str],
    seed: int | None = None,
):
    """(method, parameters) ready to merge: the run's ``seed`` filled in (:meth:`CombineConfig.method_parameters`);
    regmean gets each fine-tune's Gram matrices on its own task."""
    method = get_method(cfg.method)
    params = method.parse_params(cfg.method_parameters(seed))
    if method.needs_data:
        method = with_grams(method, pool_grams(pool, theta_zs, thetas, names, params))
    return method, params


def combine_method(
    chooser: Chooser,
    cfg: CombineConfig,
    theta_zs: StateDict,
    thetas: Sequence[StateDict],
    names: Sequence[str],
    seed: int | None = None,
) -> Combined:
    """Merge with ``cfg.method``; choose lambda on the line theta_zs -> merge(lambda_max) with the run's selection."""
    method, params = bound_method(cfg, chooser.pool, theta_zs, thetas, names, seed)
    grid = cfg.grid()
    record: dict[str, Any] = {"method": cfg.method, "parameters": params.model_dump(mode="json"), "scalings": grid}
    if grid is None:  # no coefficient: the method's merge as is
        theta = merge_states(method, params, theta_zs, thetas)
        return Combined(theta, [], [], {**record, "scaling": None})
    top = grid[-1]
    if has_scaling(method):
        top_params = method.parse_params({**cfg.method_parameters(seed), "scaling": top})
        end = merge_states(method, top_params, theta_zs, thetas)
    else:  # lambda scales the merge's task vector
        merged = merge_states(method, params, theta_zs, thetas)
        end = merged if top == 1.0 else Line.between(theta_zs, merged).at(top)
    line = Line.between(theta_zs, end, f"{cfg.method}/")
    update: dict[str, Any] = {"alphas": [s / top for s in grid]}
    if chooser.selection.strategy == "grid":  # every scaling is a candidate, whatever the run's grid budget
        update["budget"] = None
    choice = chooser.on_line(line, chooser.selection.model_copy(update=update))
    scaling = round(choice.alpha * top, 6)
    record.update(scaling=scaling, line_end_scaling=top)
    return Combined(chosen_state(line, choice), [scaling], [choice], record)


def combine_parallel(
    chooser: Chooser,
    cfg: CombineConfig,
    theta_zs: StateDict,
    thetas: Sequence[StateDict],
    names: Sequence[str],
    sweeps: int = 1,
    seed: int | None = None,
) -> Combined:
    """Combine the fine-tunes ``thetas`` (of the tasks ``names``, each from ``theta_zs``) as ``cfg`` says.

    ``seed``: the run's seed, the default of the method's own ``seed`` parameter (DARE's drop masks,
    RegMean's images) when ``cfg.parameters`` gives none; None: the method's default (0).
    """
    if len(thetas) != len(names):
        raise PaintError(f"{len(thetas)} fine-tunes but {len(names)} task names")
    if cfg.method == PER_TASK:
        return combine_per_task(chooser, theta_zs, thetas, sweeps)
    try:
        cfg.check_tasks(len(thetas))
    except ValueError as e:
        raise PaintError(str(e)) from None
    return combine_method(chooser, cfg, theta_zs, thetas, names, seed)

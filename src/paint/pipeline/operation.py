"""The patch operation: fine-tune the image tower -> choose the coefficient on validation -> test.

Every workflow patches through these three steps on a :class:`paint.pipeline.pool.TaskPool`:

- :func:`finetune_tower` fine-tunes from any image-tower state on the named pool tasks with the
  configured recipe (default: PAINT's, their zero-shot heads frozen) and returns theta_ft (the epoch
  checkpoints make it resumable); :func:`start_state` adds to theta_zs what a recipe's lines also
  interpolate, as the recipe's ``coverage()`` says (the text tower, e.g. flyp; the patching tasks'
  learned heads as ``head::<task>``, e.g. lp-ft); no recipe is named here;
- :func:`choose` evaluates the line theta_zs -> theta_ft on validation with the configured
  selection (grid or search, one :class:`paint.selection.SelectionConfig`) and returns the chosen
  alpha, every reported rule's choice and the evaluated points;
- :func:`test_at` evaluates the test splits at named alphas (zero-shot, patched, fine-tuned).

:func:`patch_operation` chains the first two; ``paint patch``, the multi-task modes, transfer, the case
studies and the demo all call these and none re-implements the sequence.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from paint.errors import PaintError
from paint.pipeline.perblock import basis_for, block_record, diagonal_sweep, search_blocks
from paint.pipeline.pool import Line, TaskPool, state_id, sweep_point
from paint.pipeline.race import choose_by_race
from paint.progress import counter, ticking
from paint.selection import SelectionConfig, evaluator_for, run_search, select_candidates
from paint.selection.blockwise import is_block_choice
from paint.selection.objectives import TaskMetrics
from paint.train.finetune import FinetuneConfig, RecipeResult, TrainingSet, finetune
from paint.train.recipes.base import Coverage, is_text_tower_key
from paint.train.recipes.registry import recipe_names
from paint.train.record import FitResult
from paint.types import PatchState, StateDict
from paint.utils import atomic_path
from paint.weights.blocks import interpolate_blocks, mean_alpha
from paint.weights.writer import save_safetensors_file


@dataclass(frozen=True)
class Choice:
    """A chosen coefficient and how it was chosen."""

    alpha: float
    rule: str  # e.g. "constrained-mean", or "search:bounded/mean" for a search strategy
    epsilon: float
    candidates: dict[str, dict[str, Any]]  # every reported rule's choice on the evaluated points
    sweep: list[dict[str, Any]]  # evaluated points in alpha order: {"alpha", "val", "val_loss"}
    search: dict[str, Any] | None = None  # the search record (strategy, evaluations, ...) unless grid
    n_model_evals: int = 0
    block_alphas: list[dict[str, float]] | None = None  # per-block strategies: {block: alpha} per task vector

    def record(self) -> dict[str, Any]:
        """The ``selection`` entry of a run's summary."""
        rec = {"rule": self.rule, "epsilon": self.epsilon, "candidates": self.candidates, "search": self.search}
        if self.block_alphas is not None:
            rec["block_alphas"] = self.block_alphas
        return rec


@dataclass
class PatchOutcome:
    """One patch: the line theta_zs -> theta_ft, the fine-tuning record, the choice, timings."""

    line: Line
    fit: FitResult
    choice: Choice
    timing_s: dict[str, float] = field(default_factory=dict)

    @property
    def theta(self) -> PatchState:
        """The patched state at the chosen alpha (or per-block alphas)."""
        return chosen_state(self.line, self.choice)


def chosen_state(line: Line, choice: Choice) -> PatchState:
    """The patched state: theta(alpha) on ``line``, or per block with the chosen block alphas."""
    if choice.block_alphas is not None:
        return PatchState.of(interpolate_blocks(line.theta_zs, line.theta_ft, choice.block_alphas[0]))
    return line.at(choice.alpha)


def finetune_tower(
    pool: TaskPool,
    theta_start: StateDict,
    names: Sequence[str],
    cfg: FinetuneConfig,
    out_dir: Path | None,
    resume: bool,
    fingerprint: str,
    sets: Sequence[TrainingSet] | None = None,
) -> tuple[PatchState, RecipeResult]:
    """Fine-tune from ``theta_start`` on the named pool tasks jointly with ``cfg.recipe``; return (theta_ft, record).

    ``theta_ft`` has the keys of ``theta_start``: the image tower, and what :func:`start_state` adds
    for the recipe (the text tower for flyp, ``head::<task>`` for lp-ft), so that every weight-space
    operation downstream treats them alike. ``sets`` replaces the pool tasks' training splits when a
    study trains on other images (attacked copies, a subset of counts); each set is still scored
    against its own head.
    """
    covers, start = cfg.recipe.coverage(), PatchState.of(theta_start)
    missing = [n for n in names if n not in start.heads] if covers.learns_heads else []
    if missing or (covers.text_tower and not start.text):
        what = "learns a head per patching task" if missing else "fine-tunes both towers"
        plain = recipe_names(lambda cls: cls.soupable and cls.covers == Coverage())
        raise PaintError(
            f"recipe {cfg.recipe.label()} {what}, which this workflow does not carry along (`paint patch`, "
            f"`paint multitask`, `paint transfer` and `paint compare` do); use {', '.join(plain)} or a soup of those"
        )
    pool.model.load_state_dict(start.model_tensors(), strict=False)
    if sets is None:
        sets = [_training_set(pool, start, n, "train") for n in names]
    val = [_training_set(pool, start, n, "val") for n in names]
    fit = finetune(
        pool.model,
        list(sets),
        pool.spec,
        cfg,
        out_dir,
        resume=resume,
        fingerprint=fingerprint,
        val_sets=val,
        tokenizer=getattr(pool.bundle, "tokenizer", None),
    )
    state = pool.model.state_dict()

    def after(part: StateDict, new: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: new.get(k, v).detach().to(v.dtype).clone() for k, v in part.items()}

    # a head no one learned (another task's) stays as it was
    return PatchState(after(start.image, state), after(start.text, state), after(start.heads, fit.heads)), fit


def _training_set(pool: TaskPool, theta: StateDict, name: str, split: str) -> TrainingSet:
    """A pool task's split with its current head (a learned one the state carries, else the zero-shot one)."""
    t = pool.task(name)
    head = PatchState.of(theta).heads.get(name, t.head)
    return TrainingSet(name, t.images[split], t.labels[split], head, t.classnames, t.templates)


def start_state(pool: TaskPool, theta_zs: StateDict, cfg: FinetuneConfig) -> PatchState:
    """theta_zs as the recipe's lines need it: the image tower, plus what its coverage names (the text
    tower; the patching tasks' zero-shot heads, which lp-ft learns from).

    With the default recipe this is the image tower alone, so runs and their result keys are unchanged.
    """
    covers = cfg.recipe.coverage()
    text, heads = {}, {}
    if covers.text_tower:  # the text tower and projection; the logit scale stays out of the line
        text = {k: v.detach().clone() for k, v in pool.model.state_dict().items() if is_text_tower_key(k)}
    if covers.learns_heads:
        heads = {n: pool.task(n).head.detach().float().cpu().clone() for n in pool.names("patch")}
    return PatchState(PatchState.of(theta_zs).image, text, heads)


def split_heads(theta: StateDict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(model tensors, learned heads by task) of a state: the heads have no place in a CLIP checkpoint."""
    st = PatchState.of(theta)
    return st.model_tensors(), dict(st.heads)


def save_heads(heads: dict[str, torch.Tensor], path: Path) -> None:
    """Learned heads (C, D) by task name, as safetensors (atomic)."""

    with atomic_path(path) as tmp:
        save_safetensors_file({n: h.contiguous() for n, h in heads.items()}, tmp)


def choose(
    pool: TaskPool,
    line: Line,
    cfg: SelectionConfig,
    patch: Sequence[str],
    support: Sequence[str],
    reference: TaskMetrics | None = None,
    per_block: bool = False,
) -> Choice:
    """Choose alpha on ``line`` on validation as ``cfg`` says; every evaluation goes to the pool's store.

    ``reference`` is the zero-shot model's validation metrics when the line does not start there
    (sequential multi-task patching); by default the line's alpha 0 is the reference.
    ``per_block``: the caller builds the patched state with :func:`chosen_state` (or from
    ``block_alphas``), so per-block settings (``lines``, ``blockwise``, ``entropy``) are allowed;
    a caller that reads only ``alpha`` gets a one-line refusal instead of a wrong model.

    Example:
        >>> from paint import SelectionConfig, choose
        >>> choice = choose(pool, line, SelectionConfig(), ["digits"], ["shapes", "colours"])  # doctest: +SKIP
        >>> choice.alpha, choice.candidates["constrained-each"]["alpha"]  # doctest: +SKIP
    """

    if is_block_choice(cfg):
        if not per_block:
            raise PaintError(
                f"selection strategy {cfg.strategy!r} / objective {cfg.objective!r} chooses per-block alphas, "
                "which paint patch and paint multitask support; this workflow takes one alpha (grid or a search)"
            )
        return choose_blocks(pool, [line.theta_ft], line.theta_zs, cfg, patch, support, reference, line.id)
    if cfg.race_settings() is not None and reference is None:
        alpha, rule, candidates, sweep, search = choose_by_race(pool, line, cfg, patch, support)
        return Choice(alpha, rule, cfg.epsilon, candidates, sweep, search, len(cfg.points()))
    measure = pool.measure(line)
    with counter(
        f"choose alpha ({cfg.strategy}, val{', ' + line.id.split('/')[0] if '/' in line.id else ''})",
        total=cfg.max_evals(),
    ) as bar:
        result = run_search(evaluator_for(cfg, ticking(measure, bar), patch, support, reference), cfg)
    sweep = [sweep_point(e.alpha, e.metrics) for e in sorted(result.evaluations, key=lambda e: e.alpha)]
    if reference is None and all(p["alpha"] != 0.0 for p in sweep):  # the zero-shot row is always in the table
        sweep.insert(0, sweep_point(0.0, measure(0.0, False)))
    candidates = select_candidates(sweep, patch, support, cfg.epsilon, reference)
    search = None
    rule = cfg.rule_name
    if cfg.strategy != "grid":
        rule = f"search:{cfg.strategy}/{cfg.rule_name}"
        search = {k: v for k, v in result.to_dict().items() if k != "evaluations"}
        search["alphas_evaluated"] = [e.alpha for e in result.evaluations]
    return Choice(result.alpha, rule, cfg.epsilon, candidates, sweep, search, result.n_model_evals)


def choose_blocks(
    pool: TaskPool,
    thetas: Sequence[StateDict],
    theta_zs: StateDict,
    cfg: SelectionConfig,
    patch: Sequence[str],
    support: Sequence[str],
    reference: TaskMetrics | None = None,
    line_id: str | None = None,
) -> Choice:
    """Choose one alpha per block (and per task vector in ``thetas``) as ``cfg`` says (lines, blockwise, entropy)."""

    basis = basis_for(theta_zs, thetas)
    result, cost = search_blocks(pool, basis, cfg, patch, support, reference)
    sweep = diagonal_sweep(pool, basis, result, line_id, cfg.objective == "entropy")
    candidates = select_candidates(sweep, patch, support, cfg.epsilon, reference)
    per_vector = basis.alphas_of(result.alphas)
    return Choice(
        mean_alpha(per_vector[0]),
        f"search:{cfg.strategy}/{cfg.rule_name}",
        cfg.epsilon,
        candidates,
        sweep,
        block_record(result, basis, cost),
        result.n_model_evals,
        per_vector,
    )


def patch_operation(
    pool: TaskPool,
    theta_zs: StateDict,
    patch_names: Sequence[str],
    support_names: Sequence[str],
    finetune_cfg: FinetuneConfig,
    selection: SelectionConfig,
    out_dir: Path | None,
    resume: bool,
    fingerprint: str,
    sets: Sequence[TrainingSet] | None = None,
    reference: TaskMetrics | None = None,
    tag: str = "",
) -> PatchOutcome:
    """Fine-tune from ``theta_zs`` on ``patch_names`` and choose alpha on the line back to it."""
    t0 = time.time()
    theta_ft, fit = finetune_tower(pool, theta_zs, patch_names, finetune_cfg, out_dir, resume, fingerprint, sets)
    t1 = time.time()
    line = Line.between(theta_zs, theta_ft, tag)
    choice = choose(pool, line, selection, patch_names, support_names, reference)
    return PatchOutcome(line, fit, choice, {"finetune": round(t1 - t0, 2), "sweep": round(time.time() - t1, 2)})


def test_at(
    pool: TaskPool, line: Line, alphas: Mapping[str, float], tasks: Sequence[str] | None = None
) -> dict[str, dict]:
    """Test accuracy of every task at each named alpha: ``{task: {"role", label: accuracy}}``."""
    at = {label: pool.evaluate_line(line, a, "test", tasks) for label, a in alphas.items()}
    names = tasks if tasks is not None else [t.name for t in pool.tasks]
    return {n: {"role": pool.task(n).role, **{label: at[label][n]["accuracy"] for label in alphas}} for n in names}


def outcome_record(
    model: str, text_identity: str, res: PatchOutcome, patch: Sequence[str], support: Sequence[str], t0: float
) -> dict[str, Any]:
    """The part of a study's summary every patch run shares: model identity, choice, sweep, fine-tuning, timing."""
    return {
        "model": model,
        "model_identity": {"text": text_identity[:16], "image_tower": state_id(res.line.theta_zs)},
        "alpha": res.choice.alpha,
        "selection": res.choice.record() | {"patching": list(patch), "support": list(support)},
        "sweep": res.choice.sweep,
        "finetune": {
            "history": res.fit.history,
            "steps": res.fit.steps,
            "resumed_from_epoch": res.fit.resumed_from_epoch,
            "runtime": res.fit.runtime,
        },
        "timing_s": {"finetune": res.timing_s["finetune"], "total": round(time.time() - t0, 2)},
    }

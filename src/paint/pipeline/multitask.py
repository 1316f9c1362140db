"""Patching several tasks at once: the PAINT paper's joint, sequential and parallel modes.

- ``joint``: fine-tune once on the union of the patching tasks, each sample scored against its
  own task's frozen head; choose one alpha on the line theta_zs -> theta_joint.
- ``sequential``: patch task i on top of the patch for task i - 1: fine-tune from theta_{i-1}
  on task i, choose alpha_i on the line theta_{i-1} -> theta_ft_i (objective over the tasks
  patched so far), theta_i = the chosen point.
- ``parallel``: fine-tune each task from theta_zs, then theta = theta_zs + sum_i alpha_i tau_i
  with tau_i = theta_i - theta_zs; the alpha vector is searched coordinate by coordinate with
  the configured scalar strategy (``parallel_sweeps`` passes), each coordinate a line search;
  with a per-block strategy (``lines``, ``blockwise``, ``entropy``) one vector of per-block alphas
  per task, ``theta_zs + sum_i sum_l alpha_il tau_il`` (layer-wise AdaMerging). That is the default
  ``combine: {method: per_task}``; ``combine.method`` names a merge method instead (TIES, DARE,
  Iso-C/CTS, TSV-M, RegMean, ...) whose one coefficient is chosen on validation
  (:mod:`paint.pipeline.combine`, the merging benchmark's code path). The reports are
  :mod:`paint.pipeline.multitask_report`.

Every alpha is chosen on validation splits by :func:`paint.pipeline.operation.choose`; the reference of every
objective (zero-shot accuracy and loss) is theta_zs, whatever line is searched. With one
patching task the three modes are single-task PAINT. Test accuracies of each mode's final
weights are compared in ``comparison.md`` / ``comparison.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from paint.config import first_duplicate
from paint.data.spec import TaskSpec
from paint.errors import PaintError
from paint.models.clip import save_clip
from paint.pipeline.combine import Chooser, CombineConfig, combine_parallel
from paint.pipeline.multitask_report import comparison_markdown, comparison_rows, write_seeded_multitask
from paint.pipeline.operation import Choice, chosen_state, finetune_tower, save_heads, split_heads, start_state
from paint.pipeline.pool import Line, TaskPool, start_pool, state_id
from paint.pipeline.run import ModelRunConfig, check_output_dir, check_recipe_fits_selection
from paint.pipeline.rundir import run_scope
from paint.pipeline.seeds import SeedsSetting, run_seeds
from paint.selection import SelectionConfig
from paint.selection.objectives import TaskMetrics
from paint.train.finetune import FinetuneConfig
from paint.types import StateDict
from paint.utils import hash_tensors, sha256_strings, write_json_atomic, write_text_atomic

Mode = Literal["joint", "sequential", "parallel"]
MODES: tuple[str, ...] = ("joint", "sequential", "parallel")


# ----------------------------------------------------------------------------- the run and its pieces


@dataclass
class MultitaskRun:
    """What every mode shares: the task pool, theta_zs, the settings and where checkpoints go."""

    pool: TaskPool
    theta_zs: StateDict
    selection: SelectionConfig
    finetune: FinetuneConfig
    out_dir: Path | None = None
    resume: bool = False
    fingerprint: str = ""
    # Fine-tunes already made, by (start state, tasks): sequential step 0 and parallel's fine-tune of
    # the same task are one computation. Runs that share a dict (a study's sub-runs) share fine-tunes.
    finetuned: dict[tuple[str, tuple[str, ...]], StateDict] = field(default_factory=dict, repr=False)
    _reference: TaskMetrics | None = field(default=None, repr=False)

    @property
    def patch(self) -> list[str]:
        return self.pool.names("patch")

    @property
    def support(self) -> list[str]:
        return self.pool.names("support")

    def reference(self) -> TaskMetrics:
        """Validation metrics of theta_zs on every task (measured once, stored)."""
        if self._reference is None:
            self._reference = self.pool.evaluate_state(self.theta_zs, "val")
        return self._reference

    def finetune_from(self, theta_start: StateDict, names: Sequence[str], tag: str) -> StateDict:
        """Fine-tune from ``theta_start`` on the named tasks jointly; return theta_ft.

        The same fine-tune (same start, same tasks) is made once per run: a second call returns the
        first one's weights, whatever its ``tag`` (the tag only names the checkpoint directory).
        """
        start = state_id(theta_start)
        key = (start, tuple(names))
        if key not in self.finetuned:
            out = self.out_dir / tag if self.out_dir is not None else None
            fp = f"{self.fingerprint}/{tag}/{start}"
            self.finetuned[key], _ = finetune_tower(self.pool, theta_start, names, self.finetune, out, self.resume, fp)
        return self.finetuned[key]

    def chooser(self, patch: Sequence[str] | None = None) -> Chooser:
        """The configured selection on this pool, over ``patch`` (default: every patching task), referenced to theta_zs."""
        return Chooser(
            self.pool, self.selection, self.patch if patch is None else list(patch), self.support, self.reference()
        )

    def choose_on_line(self, theta_a: StateDict, theta_b: StateDict, patch: Sequence[str]) -> Choice:
        """Choose alpha on theta_a -> theta_b with the configured selection, referenced to theta_zs.

        The line is keyed by its two ends' contents alone, so a line that two modes share (sequential
        step 0 and parallel's first coordinate are both theta_zs -> theta_1) is evaluated once per task.
        """
        return self.chooser(patch).on_line(Line.between(theta_a, theta_b))


@dataclass
class ModeResult:
    """A mode's final weights, its alphas and every choice it made."""

    mode: str
    theta: StateDict
    alphas: list[float]
    choices: list[Choice]
    n_finetunes: int
    seconds: float = 0.0
    combine: dict[str, Any] | None = None  # parallel: the combine step's record (method, parameters, lambda)

    @property
    def n_model_evals(self) -> int:
        return sum(c.n_model_evals for c in self.choices)


# ----------------------------------------------------------------------------- the three modes


def patch_joint(ctx: MultitaskRun) -> ModeResult:
    """One fine-tune on the union of the patching tasks, one alpha."""
    theta_ft = ctx.finetune_from(ctx.theta_zs, ctx.patch, "joint/finetune")
    res = ctx.choose_on_line(ctx.theta_zs, theta_ft, ctx.patch)
    return ModeResult("joint", chosen_state(Line.between(ctx.theta_zs, theta_ft), res), [res.alpha], [res], 1)


def patch_sequential(ctx: MultitaskRun) -> ModeResult:
    """Patch each task on top of the previous patch, choosing alpha at each step."""
    theta = ctx.theta_zs
    alphas, choices = [], []
    patch = ctx.patch
    for i, name in enumerate(patch):
        theta_ft = ctx.finetune_from(theta, [name], f"sequential/{i}-{name}/finetune")
        res = ctx.choose_on_line(theta, theta_ft, patch[: i + 1])
        theta = chosen_state(Line.between(theta, theta_ft), res)
        alphas.append(res.alpha)
        choices.append(res)
    return ModeResult("sequential", theta, alphas, choices, len(patch))


def patch_parallel(ctx: MultitaskRun, sweeps: int = 1, combine: CombineConfig | None = None) -> ModeResult:
    """Fine-tune each task from theta_zs; combine them as ``combine`` says (:func:`paint.pipeline.combine.combine_parallel`,
    a merge method's ``seed`` following the run's, ``finetune.seed``)."""
    thetas = [ctx.finetune_from(ctx.theta_zs, [n], f"parallel/{i}-{n}/finetune") for i, n in enumerate(ctx.patch)]
    cfg = combine or CombineConfig()
    r = combine_parallel(ctx.chooser(), cfg, ctx.theta_zs, thetas, ctx.patch, sweeps, seed=ctx.finetune.seed)
    return ModeResult("parallel", r.theta, r.alphas, r.choices, len(ctx.patch), combine=r.record)


def run_mode(
    ctx: MultitaskRun, mode: str, parallel_sweeps: int = 1, combine: CombineConfig | None = None
) -> ModeResult:
    """Run one mode, timed (``combine``: parallel's combine step, default ``per_task``)."""
    t0 = time.time()
    if mode == "joint":
        r = patch_joint(ctx)
    elif mode == "sequential":
        r = patch_sequential(ctx)
    elif mode == "parallel":
        r = patch_parallel(ctx, parallel_sweeps, combine)
    else:
        raise PaintError(f"unknown multi-task mode {mode!r}; choose from: {', '.join(MODES)}")
    r.seconds = time.time() - t0
    return r


# ----------------------------------------------------------------------------- config and entry point


class MultitaskConfig(ModelRunConfig, SeedsSetting):
    """``paint multitask``: several patching tasks, one or more modes, a comparison table.

    Example:
        >>> from paint import MultitaskConfig
        >>> cfg = MultitaskConfig(output_dir="runs/mt", patch_tasks=["digits", "counting"], support_tasks=["shapes"])
        >>> cfg.modes
        ['joint', 'sequential', 'parallel']
    """

    patch_tasks: list[TaskSpec] = Field(min_length=1)
    support_tasks: list[TaskSpec] = Field(default_factory=list)
    modes: list[Mode] = Field(default_factory=lambda: list(MODES), min_length=1)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    parallel_sweeps: int = Field(
        1, ge=1, description="combine per_task: coordinate-search passes over the alpha vector"
    )
    combine: CombineConfig = Field(
        default_factory=CombineConfig,
        description="parallel mode's combine step: per_task alphas (default) or a merge method with lambda chosen on validation",
    )
    save_models: bool = Field(
        True, description="write each mode's patched HF checkpoint under <output_dir>/<mode>/model"
    )
    reference: Mode | None = Field(
        None, description="the mode paired differences are taken against (default: the first)"
    )

    @model_validator(mode="after")
    def _checks(self):
        names = [t.name for t in self.patch_tasks + self.support_tasks]
        dup = first_duplicate(names)
        if dup:
            raise ValueError(f"task {dup!r} is listed twice")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError("a mode is listed twice")
        if self.reference is not None and self.reference not in self.modes:
            raise ValueError(f"reference {self.reference!r} is not one of the modes ({', '.join(self.modes)})")
        check_recipe_fits_selection(self.finetune, self.selection)
        self.combine.check_run(self.modes, len(self.patch_tasks), self.parallel_sweeps)
        return self


def start_run(
    cfg: Any,
    out: Path,
    resume: bool,
    patch_specs: Sequence[TaskSpec],
    support_specs: Sequence[TaskSpec],
    marker: str = "comparison.json",
) -> tuple[MultitaskRun, Any]:
    """Load model and tasks (checked before any output), open the run, prepare the pool.

    ``cfg`` is a :class:`MultitaskConfig` or :class:`paint.studies.transfer.TransferConfig` (model,
    revision, device, finetune, selection, eval_batch_size, cache_path). Returns (run, bundle).
    """

    pool, bundle = start_pool(cfg, out, resume, patch_specs, support_specs, marker)
    theta_zs = start_state(pool, bundle.image_tower_copy(), cfg.finetune)  # + text tower (flyp), heads (lp-ft)
    fp = sha256_strings(
        [
            bundle.text_identity,
            hash_tensors(theta_zs),
            cfg.finetune.identity(),
            *(f"{t.name}:{t.identities.get('train', '')}" for t in pool.tasks),
        ]
    )
    return MultitaskRun(pool, theta_zs, cfg.selection, cfg.finetune, out, resume, fp), bundle


@run_scope
def run_multitask(cfg: MultitaskConfig, resume: bool = False) -> dict[str, Any]:
    """Run every configured mode; write comparison.md, comparison.json (last) and checkpoints.

    With ``seeds``, the whole run is repeated per seed in ``seed-<s>/`` (finished seeds kept on
    resume) and the parent's reports compare the modes with intervals and paired differences.

    Example:
        >>> from paint import MultitaskConfig, run_multitask
        >>> cfg = MultitaskConfig(output_dir="runs/mt", patch_tasks=["digits", "counting"], support_tasks=["shapes"])
        >>> print(run_multitask(cfg)["table"])  # doctest: +SKIP
    """
    if cfg.seeds is None:
        return run_multitask_once(cfg, resume)
    t0 = time.time()
    runs = run_seeds(cfg, resume, "comparison.json", run_multitask_once)
    return write_seeded_multitask(cfg, runs, time.time() - t0)


def run_multitask_once(cfg: MultitaskConfig, resume: bool = False) -> dict[str, Any]:
    """One run of every mode in ``cfg.output_dir`` (with ``finetune.seed``)."""

    t0 = time.time()
    out = Path(cfg.output_dir)
    check_output_dir(out, resume, "comparison.json")
    ctx, bundle = start_run(cfg, out, resume, cfg.patch_tasks, cfg.support_tasks)
    results = [run_mode(ctx, m, cfg.parallel_sweeps, cfg.combine) for m in cfg.modes]
    rows = comparison_rows(ctx, results)
    if cfg.save_models:
        full = bundle.model.state_dict()
        for r in results:
            model_part, heads = split_heads(r.theta)
            save_clip(bundle, out / r.mode / "model", state_dict={**full, **model_part})
            if heads:  # lp-ft: the patching tasks' heads at the chosen alphas
                save_heads(heads, out / r.mode / "heads.safetensors")
    summary = {
        "model": cfg.model,
        "patch_tasks": ctx.patch,
        "support_tasks": ctx.support,
        "selection": cfg.selection.model_dump(mode="json"),
        "modes": {
            r.mode: {
                "alphas": r.alphas,
                "choices": [
                    c.record() | {"alpha": c.alpha, "n_model_evals": c.n_model_evals, "sweep": c.sweep}
                    for c in r.choices
                ],
                "finetunes": r.n_finetunes,
                "model_evals": r.n_model_evals,
                "seconds": round(r.seconds, 2),
                **({"combine": r.combine} if r.combine else {}),
            }
            for r in results
        },
        "comparison": rows,
        "timing_s": {"total": round(time.time() - t0, 2)},
    }
    table = comparison_markdown(rows, ctx.patch, ctx.support)
    header = (
        f"# Multi-task patching: {', '.join(ctx.patch)}\n\nTest accuracy (%); alphas chosen on validation "
        f"by `{cfg.selection.strategy}` on `{cfg.selection.rule_name}`."
    )
    write_text_atomic(out / "comparison.md", f"{header}\n\n{table}\n")
    write_json_atomic(out / "comparison.json", summary)
    summary["table"] = table
    return summary


def run_patch_multitask(cfg: Any, resume: bool) -> dict[str, Any]:
    """``paint patch`` with several patching tasks: run its ``modes`` and compare them."""
    mt = MultitaskConfig(
        model=cfg.model,
        revision=cfg.revision,
        output_dir=cfg.output_dir,
        patch_tasks=cfg.patch_tasks,
        support_tasks=cfg.support_tasks,
        modes=cfg.modes,
        combine=cfg.combine,
        finetune=cfg.finetune,
        selection=cfg.selection,
        eval_batch_size=cfg.eval_batch_size,
        cache_dir=cfg.cache_dir,
        device=cfg.device,
        threads=cfg.threads,
        num_workers=cfg.num_workers,
    )
    return run_multitask(mt, resume=resume)

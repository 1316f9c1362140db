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
  per task, ``theta_zs + sum_i sum_l alpha_il tau_il`` (layer-wise AdaMerging).

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

import numpy as np
from pydantic import Field, model_validator

from paint.config import first_duplicate
from paint.data.spec import TaskSpec
from paint.errors import PaintError
from paint.pipeline.operation import Choice, choose, choose_blocks, chosen_state, finetune_tower
from paint.pipeline.pool import Line, TaskPool, start_pool, state_id
from paint.pipeline.run import ModelRunConfig, check_recipe_fits_selection
from paint.pipeline.rundir import run_scope
from paint.pipeline.seeds import (
    SeedsSetting,
    bound_on_test,
    method_summary,
    methods_markdown,
    run_seeds,
    summarise_methods,
    test_record,
)
from paint.selection import SelectionConfig
from paint.selection.blockwise import is_block_choice
from paint.selection.objectives import TaskMetrics
from paint.train.finetune import FinetuneConfig
from paint.types import StateDict
from paint.utils import hash_tensors, sha256_strings, write_json_atomic, write_text_atomic
from paint.weights.blocks import add_block_task_vectors, mean_alpha
from paint.weights.ops import add_task_vectors, task_vector

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

    def choose_on_line(self, theta_a: StateDict, theta_b: StateDict, patch: Sequence[str]) -> Choice:
        """Choose alpha on theta_a -> theta_b with the configured selection, referenced to theta_zs.

        The line is keyed by its two ends' contents alone, so a line that two modes share (sequential
        step 0 and parallel's first coordinate are both theta_zs -> theta_1) is evaluated once per task.
        """
        line = Line.between(theta_a, theta_b)
        return choose(self.pool, line, self.selection, patch, self.support, self.reference(), per_block=True)


@dataclass
class ModeResult:
    """A mode's final weights, its alphas and every choice it made."""

    mode: str
    theta: StateDict
    alphas: list[float]
    choices: list[Choice]
    n_finetunes: int
    seconds: float = 0.0

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
    ctx: MultitaskRun, thetas: Sequence[StateDict], sweeps: int = 1
) -> tuple[list[float], list[Choice], StateDict]:
    """Coordinate-wise search of the alpha vector; returns (alphas, choices, final theta)."""
    alphas = [0.0] * len(thetas)
    choices: list[Choice] = []
    theta = ctx.theta_zs
    for _ in range(sweeps):
        for i in range(len(thetas)):
            base, end = parallel_line(ctx.theta_zs, thetas, alphas, i)
            res = ctx.choose_on_line(base, end, ctx.patch)
            alphas[i] = res.alpha
            choices.append(res)
            theta = Line.between(base, end).at(res.alpha)  # = parallel_merge(...) up to rounding
    return alphas, choices, theta


def patch_parallel(ctx: MultitaskRun, sweeps: int = 1) -> ModeResult:
    """Fine-tune each task from theta_zs; search the alpha vector of their task vectors."""
    thetas = [ctx.finetune_from(ctx.theta_zs, [n], f"parallel/{i}-{n}/finetune") for i, n in enumerate(ctx.patch)]
    if is_block_choice(ctx.selection):  # one vector of per-block alphas per task (layer-wise AdaMerging)
        res = choose_blocks(ctx.pool, thetas, ctx.theta_zs, ctx.selection, ctx.patch, ctx.support, ctx.reference())
        theta = add_block_task_vectors(ctx.theta_zs, [task_vector(ctx.theta_zs, t) for t in thetas], res.block_alphas)
        alphas = [mean_alpha(a) for a in res.block_alphas]
        return ModeResult("parallel", theta, alphas, [res], len(ctx.patch))
    alphas, choices, theta = search_parallel(ctx, thetas, sweeps)
    return ModeResult("parallel", theta, alphas, choices, len(ctx.patch))


def run_mode(ctx: MultitaskRun, mode: str, parallel_sweeps: int = 1) -> ModeResult:
    """Run one mode, timed."""
    t0 = time.time()
    if mode == "joint":
        r = patch_joint(ctx)
    elif mode == "sequential":
        r = patch_sequential(ctx)
    elif mode == "parallel":
        r = patch_parallel(ctx, parallel_sweeps)
    else:
        raise PaintError(f"unknown multi-task mode {mode!r}; choose from: {', '.join(MODES)}")
    r.seconds = time.time() - t0
    return r


# ----------------------------------------------------------------------------- comparison


def comparison_rows(ctx: MultitaskRun, results: Sequence[ModeResult]) -> list[dict[str, Any]]:
    """One row per mode (and zero-shot): test accuracy per task, group means, costs."""
    zs = ctx.pool.evaluate_state(ctx.theta_zs, "test")
    rows = []
    for label, theta, r in [("zero-shot", ctx.theta_zs, None)] + [(m.mode, m.theta, m) for m in results]:
        test = zs if r is None else ctx.pool.evaluate_state(theta, "test")
        acc = {n: test[n]["accuracy"] for n in test}
        support = ctx.support
        zs_acc = {n: zs[n]["accuracy"] for n in zs}
        eps, constraint = ctx.selection.epsilon, ctx.selection.constraint
        rows.append(
            {
                "mode": label,
                "label": label,
                **test_record(test),
                "bound_on_test": None if r is None else bound_on_test(acc, zs_acc, support, eps, constraint),
                "alphas": [] if r is None else r.alphas,
                "test": acc,
                "patch_mean": float(np.mean([acc[n] for n in ctx.patch])),
                "support_mean": float(np.mean([acc[n] for n in support])) if support else None,
                "worst_support_drop": float(min(acc[n] - zs[n]["accuracy"] for n in support)) if support else None,
                "finetunes": 0 if r is None else r.n_finetunes,
                "model_evals": 0 if r is None else r.n_model_evals,
                "seconds": 0.0 if r is None else round(r.seconds, 2),
            }
        )
    return rows


def comparison_markdown(rows: Sequence[dict[str, Any]], patch: Sequence[str], support: Sequence[str]) -> str:
    """Markdown table of the modes (accuracy in %, drop in points)."""

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    head = [
        "mode",
        "alphas",
        *patch,
        "patch mean",
        *support,
        "support mean",
        "worst support drop",
        "fine-tunes",
        "model evals",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        alphas = ", ".join(f"{a:.3g}" for a in r["alphas"]) or "-"
        drop = "-" if r["worst_support_drop"] is None else f"{100 * r['worst_support_drop']:+.1f}"
        cells = [
            r["mode"],
            alphas,
            *(pct(r["test"][n]) for n in patch),
            pct(r["patch_mean"]),
            *(pct(r["test"][n]) for n in support),
            pct(r["support_mean"]),
            drop,
            str(r["finetunes"]),
            str(r["model_evals"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    parallel_sweeps: int = Field(1, ge=1, description="coordinate-search passes over the alpha vector")
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
    from paint.pipeline.operation import start_state

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


def write_seeded_multitask(cfg: MultitaskConfig, runs: dict[int, Any], seconds: float) -> dict[str, Any]:
    """The parent's ``comparison.md`` / ``comparison.json``: every mode over seeds, paired against the reference."""
    seeds = sorted(runs)
    first = runs[seeds[0]]
    patch, support = list(first["patch_tasks"]), list(first["support_tasks"])
    reference = cfg.reference or cfg.modes[0]
    per_seed = {s: runs[s]["comparison"] for s in seeds}
    modes = summarise_methods(per_seed, list(cfg.modes), reference, patch, support)
    zero = [next(r for r in per_seed[s] if r["label"] == "zero-shot") for s in seeds[:1]]
    zeroshot = method_summary(zero, None, patch, support)
    costs = {
        "fine-tunes": [str(runs[seeds[0]]["modes"][m]["finetunes"]) for m in cfg.modes],
        "model evals": [f"{np.mean([runs[s]['modes'][m]['model_evals'] for s in seeds]):.0f}" for m in cfg.modes],
    }
    table = methods_markdown(modes, reference, cfg.selection.epsilon, patch, support, zeroshot, costs)
    summary = {
        "model": cfg.model,
        "seeds": seeds,
        "patch_tasks": patch,
        "support_tasks": support,
        "selection": cfg.selection.model_dump(mode="json"),
        "reference": reference,
        "zeroshot": zeroshot,
        "modes": modes,
        "per_seed": {str(s): f"seed-{s}/comparison.json" for s in seeds},
        "timing_s": {"total": round(seconds, 2)},
    }
    out = Path(cfg.output_dir)
    header = f"# Multi-task patching over seeds {seeds}: {', '.join(patch)}"
    write_text_atomic(out / "comparison.md", f"{header}\n\n{table}\n")
    write_json_atomic(out / "comparison.json", summary)
    summary["table"] = table
    return summary


def run_multitask_once(cfg: MultitaskConfig, resume: bool = False) -> dict[str, Any]:
    """One run of every mode in ``cfg.output_dir`` (with ``finetune.seed``)."""
    from paint.models.clip import save_clip
    from paint.pipeline.operation import save_heads, split_heads
    from paint.pipeline.run import check_output_dir

    t0 = time.time()
    out = Path(cfg.output_dir)
    check_output_dir(out, resume, "comparison.json")
    ctx, bundle = start_run(cfg, out, resume, cfg.patch_tasks, cfg.support_tasks)
    results = [run_mode(ctx, m, cfg.parallel_sweeps) for m in cfg.modes]
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
        finetune=cfg.finetune,
        selection=cfg.selection,
        eval_batch_size=cfg.eval_batch_size,
        cache_dir=cfg.cache_dir,
        device=cfg.device,
        threads=cfg.threads,
        num_workers=cfg.num_workers,
    )
    return run_multitask(mt, resume=resume)

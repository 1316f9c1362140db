"""The scale study (the PAINT paper's RQ2): does patching get better as the model grows?

For every model of a list (by default paint's ladder ``paint:tiny``, ``paint:default``,
``paint:medium``) and every seed, one *cell* runs the same protocol:

- each patching task alone: fine-tune the image tower from theta_zs (zero-shot heads frozen),
  choose alpha on validation with the configured selection (by default the paper's intent: the
  best patching accuracy with the support tasks' mean within 1 point of zero-shot), test the
  zero-shot, fine-tuned (alpha = 1) and patched models; the linear CKA between the zero-shot and
  fine-tuned image embeddings on the task's and on the support tasks' test images;
- the multi-task modes (joint, sequential, parallel) on a list of patching tasks (by default
  two), sharing the single-task fine-tunes where the computation is the same.

A seed is a full repetition: the fine-tuning seed and the validation split carved from a
patching task's training data (``split_seed``); the test splits are the same for every seed, and
the pretrained models are the same (one pretraining per rung). Each finished cell is
``<model>/seed-<s>/cell.json`` (kept on ``--resume``; an unfinished one continues from its
fine-tuning checkpoints and stored evaluations). Then, per model, every figure gets its mean
over seeds and a 95% Student-t interval (:mod:`paint.stats`), written as ``scale.md``,
``scale.json`` (last: it marks a finished study) and the paper's figure ``scale.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from paint.config import first_duplicate
from paint.data.spec import TaskSpec
from paint.errors import PaintError
from paint.models.clip import check_model_name
from paint.pipeline.multitask import MODES, Mode, MultitaskConfig, MultitaskRun, run_mode, start_run
from paint.pipeline.multitask_report import comparison_rows
from paint.pipeline.operation import chosen_state
from paint.pipeline.pool import Line, TaskPool
from paint.pipeline.run import RunFields, check_output_dir, check_recipe_fits_selection
from paint.pipeline.rundir import DEFAULT_IGNORED, RunDir, run_scope
from paint.pipeline.seeds import Seeds, seed_list
from paint.studies.metrics import feature_cka
from paint.studies.scale_report import aggregate, model_labels, plot_scale, scale_markdown, to_json
from paint.train.finetune import FinetuneConfig
from paint.utils import write_json_atomic, write_text_atomic

CELL = "cell.json"
MARKER = "scale.json"
LADDER: tuple[str, ...] = ("paint:tiny", "paint:default", "paint:medium")


def _default_finetune() -> FinetuneConfig:
    return FinetuneConfig(epochs=10, lr=3e-4, batch_size=128, warmup_steps=20, weight_decay=0.1)


class ScaleConfig(RunFields):
    """``paint scale``: the models, seeds, tasks and the one fine-tuning recipe every cell runs.

    Example:
        >>> from paint import ScaleConfig
        >>> cfg = ScaleConfig(output_dir="runs/scale", seeds=2)
        >>> cfg.models, cfg.seed_list, cfg.multitask_tasks
        (['paint:tiny', 'paint:default', 'paint:medium'], [0, 1], ['digits', 'counting'])
    """

    models: list[str] = Field(default_factory=lambda: list(LADDER), min_length=1, description="smallest first")
    output_dir: str = "runs/scale"
    seeds: Seeds = Field(3, description="a count (seeds 0..n-1) or the list of seeds")
    patch_tasks: list[TaskSpec] = Field(
        default_factory=lambda: [
            TaskSpec(name="digits", val_fraction=0.2),
            TaskSpec(name="counting"),
            TaskSpec(name="novel-font-digits"),
        ],
        min_length=1,
    )
    support_tasks: list[TaskSpec] = Field(
        default_factory=lambda: [TaskSpec(name=n) for n in ("shapes", "colours", "rendered-digits", "backgrounds")],
        min_length=1,
    )
    multitask_tasks: list[str] = Field(
        default_factory=lambda: ["digits", "counting"], description="patching tasks patched together ([] skips)"
    )
    modes: list[Mode] = Field(default_factory=lambda: list(MODES), min_length=1)
    finetune: FinetuneConfig = Field(default_factory=_default_finetune)
    cka_images: int = Field(500, ge=2, description="test images per CKA (the patching task's; as many of support)")

    @model_validator(mode="after")
    def _checks(self):
        dup = first_duplicate([t.name for t in self.patch_tasks + self.support_tasks])
        if dup:
            raise ValueError(f"task {dup!r} is listed twice")
        dup = first_duplicate(self.models)
        if dup:
            raise ValueError(f"model {dup!r} is listed twice")
        patch = {t.name for t in self.patch_tasks}
        unknown = [n for n in self.multitask_tasks if n not in patch]
        if unknown:
            raise ValueError(
                f"multitask_tasks: {unknown[0]!r} is not one of the patch_tasks ({', '.join(sorted(patch))})"
            )
        if len(self.multitask_tasks) == 1:
            raise ValueError("multitask_tasks needs two or more patching tasks, or [] to skip the multi-task modes")
        if len(set(self.multitask_tasks)) != len(self.multitask_tasks):
            raise ValueError("multitask_tasks lists a task twice")
        check_recipe_fits_selection(self.finetune, self.selection)
        return self

    @property
    def seed_list(self) -> list[int]:
        return seed_list(self.seeds)


def cell_config(cfg: ScaleConfig, model: str, seed: int, out: Path) -> MultitaskConfig:
    """The run config of one (model, seed) cell: the study's settings with the seed applied."""
    patch = [t.model_copy(update={"split_seed": seed}) for t in cfg.patch_tasks]
    return MultitaskConfig(
        model=model,
        revision=cfg.revision,
        output_dir=str(out),
        patch_tasks=patch,
        support_tasks=cfg.support_tasks,
        modes=cfg.modes,
        finetune=cfg.finetune.model_copy(update={"seed": seed}),
        selection=cfg.selection,
        eval_batch_size=cfg.eval_batch_size,
        cache_dir=str(cfg.cache_path),
        device=cfg.device,
        threads=cfg.threads,
        num_workers=cfg.num_workers,
        save_models=False,
    )


# ----------------------------------------------------------------------------- one cell


def sub_run(ctx: MultitaskRun, patch: Sequence[str]) -> MultitaskRun:
    """The run restricted to ``patch`` and the support tasks; it shares the cell's fine-tunes and store."""
    sub = ctx.pool.with_support(patch)  # task order follows ``patch`` (sequential patching goes in that order)
    return MultitaskRun(
        sub, ctx.theta_zs, ctx.selection, ctx.finetune, ctx.out_dir, ctx.resume, ctx.fingerprint, ctx.finetuned
    )


def accuracies(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {k: float(v["accuracy"]) for k, v in metrics.items()}


def support_cka_images(pool: TaskPool, support: Sequence[str], n: int) -> np.ndarray:
    """About ``n`` test images drawn evenly from the support tasks (the first of each)."""
    per = max(1, n // max(1, len(support)))
    return np.concatenate([np.asarray(pool.task(s).images["test"][:per]) for s in support])


def single_patch(ctx: MultitaskRun, name: str, cka_images: int) -> dict[str, Any]:
    """PAINT on one task: fine-tune, choose alpha, test at 0 / chosen / 1, CKA of zs vs ft features."""

    run = sub_run(ctx, [name])
    theta_ft = run.finetune_from(ctx.theta_zs, [name], f"single/{name}/finetune")
    choice = run.choose_on_line(ctx.theta_zs, theta_ft, [name])
    patched = chosen_state(Line.between(ctx.theta_zs, theta_ft), choice)
    pool, support = run.pool, run.support
    test = {
        "zeroshot": accuracies(pool.evaluate_state(ctx.theta_zs, "test")),
        "finetuned": accuracies(pool.evaluate_state(theta_ft, "test")),
        "patched": accuracies(pool.evaluate_state(patched, "test")),
    }
    images = np.asarray(pool.task(name).images["test"][:cka_images])
    cka = {
        "patch": feature_cka(pool.model, ctx.theta_zs, theta_ft, images, pool.spec, pool.batch_size),
        "support": feature_cka(
            pool.model,
            ctx.theta_zs,
            theta_ft,
            support_cka_images(pool, support, cka_images),
            pool.spec,
            pool.batch_size,
        ),
    }
    return {
        "alpha": float(choice.alpha),
        "n_model_evals": choice.n_model_evals,
        "test": test,
        "support_mean": {k: float(np.mean([v[s] for s in support])) for k, v in test.items()},
        "cka": cka,
        "n_test": {t.name: int(len(t.labels["test"])) for t in pool.tasks},
    }


def multitask_modes(ctx: MultitaskRun, patch: Sequence[str], modes: Sequence[str]) -> dict[str, Any]:
    """The multi-task modes on ``patch``: test accuracy per mode (zero-shot row first)."""
    run = sub_run(ctx, patch)
    results = [run_mode(run, m) for m in modes]
    rows = comparison_rows(run, results)
    return {
        r["mode"]: {
            "alphas": r["alphas"],
            "test": r["test"],
            "patch_mean": r["patch_mean"],
            "support_mean": r["support_mean"],
            "finetunes": r["finetunes"],
        }
        for r in rows
    }


def cell_record(cfg: ScaleConfig, model: str, seed: int, ctx: MultitaskRun, bundle: Any) -> dict[str, Any]:
    """Everything one (model, seed) cell measures."""
    t0 = time.time()
    singles = {name: single_patch(ctx, name, cfg.cka_images) for name in ctx.patch}
    multi = multitask_modes(ctx, cfg.multitask_tasks, cfg.modes) if cfg.multitask_tasks else {}
    return {
        "model": model,
        "seed": seed,
        "params": {
            "total": int(sum(p.numel() for p in bundle.model.parameters())),
            "image_tower": int(sum(v.numel() for v in ctx.theta_zs.values())),
        },
        "patch_tasks": ctx.patch,
        "support_tasks": ctx.support,
        "single": singles,
        "multitask": multi,
        "seconds": round(time.time() - t0, 1),
    }


def read_cell(path: Path) -> dict[str, Any] | None:
    """A finished cell's record, or None when there is none or it cannot be read (the cell is then re-run)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and "single" in rec else None


@run_scope
def run_cell(cfg: ScaleConfig, model: str, seed: int, resume: bool) -> dict[str, Any]:
    """One (model, seed) cell: read it if finished, else run (or continue) it and write ``cell.json``."""
    out = Path(cfg.output_dir) / model_labels(cfg.models)[model] / f"seed-{seed}"
    done = read_cell(out / CELL)
    if done is not None:
        return done
    cell_cfg = cell_config(cfg, model, seed, out)
    ctx, bundle = start_run(cell_cfg, out, resume, cell_cfg.patch_tasks, cell_cfg.support_tasks, marker=CELL)
    record = cell_record(cfg, model, seed, ctx, bundle)
    write_json_atomic(out / CELL, record)
    return record


# ----------------------------------------------------------------------------- the study


@run_scope
def run_scale(cfg: ScaleConfig, resume: bool = False, on_cell: Any = None, report_only: bool = False) -> dict[str, Any]:
    """Every (model, seed) cell, then the tables and the figure; returns the summary (``scale.json``).

    Example:
        ```python
        from paint import ScaleConfig, run_scale

        summary = run_scale(ScaleConfig(output_dir="runs/scale", seeds=3))
        summary["results"]["paint:medium"]["summary"]["patched_patch"]  # mean, low, high (95% t), n, std
        ```

    ``report_only``: run no cell; write the reports from the cells finished so far (the others are
    listed as missing), e.g. while a long study is still running elsewhere.
    """
    t0 = time.time()
    out = Path(cfg.output_dir)
    check_output_dir(out, resume or report_only, MARKER)

    for m in cfg.models:
        check_model_name(m)
    # A study grows: a model or a seed added on --resume runs only its new cells. Each cell checks its own
    # config on resume, so a changed recipe, task or selection is still refused there.
    RunDir(out, MARKER).start(cfg, resume or report_only, ignore=DEFAULT_IGNORED | {"models", "seeds"})
    labels = model_labels(cfg.models)
    cells: dict[str, list[dict[str, Any]]] = {}
    missing: list[tuple[str, int]] = []
    for model in cfg.models:
        for seed in cfg.seed_list:
            if report_only:
                rec = read_cell(out / labels[model] / f"seed-{seed}" / CELL)
                if rec is None:
                    missing.append((model, seed))
                    continue
            else:
                rec = run_cell(cfg, model, seed, resume)
            cells.setdefault(model, []).append(rec)
            if on_cell is not None:
                on_cell(model, seed, rec)
    if not cells:
        raise PaintError(f"{out} holds no finished cell to report; run the study first")
    agg = aggregate(cfg, cells)
    seconds = time.time() - t0
    plot_scale(agg, out / "scale.png")
    table = scale_markdown(cfg, agg, missing)
    write_text_atomic(out / "scale.md", table)
    summary = {
        "models": cfg.models,
        "seeds": cfg.seed_list,
        "missing_cells": [{"model": m, "seed": s} for m, s in missing],
        "patch_tasks": [t.name for t in cfg.patch_tasks],
        "support_tasks": [t.name for t in cfg.support_tasks],
        "multitask_tasks": cfg.multitask_tasks,
        "selection": cfg.selection.model_dump(mode="json"),
        "results": to_json(agg),
        "cell_seconds": {m: [c["seconds"] for c in cs] for m, cs in cells.items()},
        "timing_s": {"total": round(seconds, 1)},
    }
    write_json_atomic(out / MARKER, summary)
    summary["table"] = table
    return summary

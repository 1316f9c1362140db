"""Broad transfer: patch on each task of a list, evaluate every patched model on all of them.

Row i of the matrix is the model patched on task i (alpha chosen on task i's validation split,
with the configured support tasks as the constraint); column j is test accuracy on task j
minus the zero-shot model's, in points. The PAINT paper's examples: MNIST -> SVHN,
EuroSAT -> RESISC45; in paint's offline world, digits -> novel-font-digits. Written as
``transfer.md``, ``transfer.json`` and the heatmap ``transfer.png``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from paint.config import first_duplicate
from paint.data.spec import TaskSpec
from paint.pipeline.multitask import MultitaskRun, start_run
from paint.pipeline.operation import choose
from paint.pipeline.pool import Line
from paint.pipeline.run import ModelRunConfig, check_output_dir, check_recipe_fits_selection
from paint.pipeline.rundir import run_scope
from paint.pipeline.seeds import SeedsSetting, run_seeds
from paint.plotting import new_figure, save_figure
from paint.stats import Difference, decode_correct, paired_difference
from paint.train.finetune import FinetuneConfig
from paint.utils import write_json_atomic, write_text_atomic


class TransferConfig(ModelRunConfig, SeedsSetting):
    """``paint transfer``: which tasks to patch one by one and evaluate across."""

    tasks: list[TaskSpec] = Field(min_length=2, description="each is patched in turn; all are evaluated")
    support_tasks: list[TaskSpec] = Field(
        default_factory=list, description="kept within epsilon by the constrained objective"
    )
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)

    @model_validator(mode="after")
    def _unique(self):
        names = [t.name for t in self.tasks + self.support_tasks]
        dup = first_duplicate(names)
        if dup:
            raise ValueError(f"task {dup!r} is listed twice")
        check_recipe_fits_selection(self.finetune, self.selection)
        return self


def delta_matrix(
    zeroshot: dict[str, float], patched: dict[str, dict[str, float]], tasks: Sequence[str]
) -> list[list[float]]:
    """rows: patched-on task, columns: evaluated task; accuracy minus zero-shot, in points."""
    return [[100.0 * (patched[src][dst] - zeroshot[dst]) for dst in tasks] for src in tasks]


def matrix_markdown(matrix: Sequence[Sequence[float]], tasks: Sequence[str], alphas: Sequence[float]) -> str:
    """Markdown table, one row per patched-on task, with its chosen alpha."""
    lines = ["| patched on (alpha) | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for src, a, row in zip(tasks, alphas, matrix, strict=True):
        lines.append(f"| {src} ({a:.3g}) | " + " | ".join(f"{v:+.1f}" for v in row) + " |")
    return "\n".join(lines)


def plot_heatmap(matrix: Sequence[Sequence[float]], tasks: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Heatmap of the delta matrix (points), diverging colours centred on 0."""

    m = np.asarray(matrix, dtype=float)
    lim = max(1.0, float(np.abs(m).max()))
    n = len(tasks)
    fig, ax = new_figure(figsize=(1.2 * n + 2.5, 1.0 * n + 1.8), dpi=120)
    im = ax.imshow(m, cmap="RdBu", vmin=-lim, vmax=lim)
    ax.set_xticks(range(n), labels=tasks, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=tasks, fontsize=8)
    ax.set_xlabel("evaluated on (test)")
    ax.set_ylabel("patched on")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{m[i, j]:+.1f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if abs(m[i, j]) > 0.6 * lim else "black",
            )
    fig.colorbar(im, ax=ax, label="accuracy - zero-shot (points)")
    ax.set_title(title or "Broad transfer: accuracy change after patching", fontsize=9)

    return save_figure(fig, path)


@run_scope
def run_transfer(cfg: TransferConfig, resume: bool = False) -> dict[str, Any]:
    """Patch on each task (fine-tune from theta_zs, choose alpha), evaluate on all; write the matrix.

    With ``seeds``, once per seed in ``seed-<s>/`` (finished seeds kept on resume); each cell of the
    parent's matrix is then the paired difference patched - zero-shot over seeds and test images,
    marked when established (:func:`paint.stats.paired_difference`).
    """
    if cfg.seeds is None:
        return run_transfer_once(cfg, resume)
    t0 = time.time()
    runs = run_seeds(cfg, resume, "transfer.json", run_transfer_once)
    return write_seeded_transfer(cfg, runs, time.time() - t0)


def seeded_matrix(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> list[list[Difference]]:
    """Cell (i, j): patched-on-i minus zero-shot on task j's test images, paired over seeds and images."""

    def correct(run: dict[str, Any], code: str, task: str) -> np.ndarray:
        return decode_correct(code, int(run["test_n"][task]))

    return [
        [
            paired_difference(
                [[correct(r, r["patched_correct"][src][dst], dst)] for r in runs],
                [[correct(r, r["zeroshot_correct"][dst], dst)] for r in runs],
            )
            for dst in names
        ]
        for src in names
    ]


def write_seeded_transfer(cfg: TransferConfig, runs: dict[int, Any], seconds: float) -> dict[str, Any]:
    """The parent's ``transfer.md`` / ``transfer.json`` / ``transfer.png`` over seeds."""
    seeds = sorted(runs)
    ordered = [runs[s] for s in seeds]
    names = list(ordered[0]["tasks"])
    cells = seeded_matrix(ordered, names)
    means = [[c.mean for c in row] for row in cells]
    alphas = {n: [r["alphas"][n] for r in ordered] for n in names}
    lines = ["| patched on (alphas) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for src, row in zip(names, cells, strict=True):
        a = ", ".join(f"{x:.3g}" for x in alphas[src])
        lines.append(
            f"| {src} ({a}) | "
            + " | ".join(f"{c.mean:+.1f} ± {c.half:.1f}{' *' if c.established else ''}" for c in row)
            + " |"
        )
    table = "\n".join(lines)
    plot_heatmap(means, names, Path(cfg.output_dir) / "transfer.png", f"Broad transfer, mean of {len(seeds)} seeds")
    summary = {
        "model": cfg.model,
        "seeds": seeds,
        "tasks": names,
        "support_tasks": [t.name for t in cfg.support_tasks],
        "alphas": alphas,
        "delta_points": {"patched": means},
        "cells": {src: {dst: c.record() for dst, c in zip(names, row, strict=True)} for src, row in zip(names, cells)},
        "per_seed": {str(s): f"seed-{s}/transfer.json" for s in seeds},
        "timing_s": {"total": round(seconds, 2)},
    }
    out = Path(cfg.output_dir)
    write_text_atomic(
        out / "transfer.md",
        f"# Broad transfer over seeds {seeds}\n\nTest accuracy change (points) of the model patched on each row's "
        "task, minus zero-shot on the same test images: mean over seeds ± the 95% half-width (paired: the seeds' t "
        "interval from 3 seeds and a bootstrap over images, in quadrature); `*`: established (the interval "
        f"excludes 0).\n\n{table}\n\n![transfer](transfer.png)\n",
    )
    write_json_atomic(out / "transfer.json", summary)
    summary["table"] = table
    return summary


def run_transfer_once(cfg: TransferConfig, resume: bool = False) -> dict[str, Any]:
    """One transfer matrix in ``cfg.output_dir`` (with ``finetune.seed``)."""

    t0 = time.time()
    out = Path(cfg.output_dir)
    check_output_dir(out, resume, "transfer.json")
    ctx, _ = start_run(cfg, out, resume, cfg.tasks, cfg.support_tasks, "transfer.json")
    pool, names = ctx.pool, [t.name for t in cfg.tasks]
    zs = pool.evaluate_state(ctx.theta_zs, "test")
    patched, finetuned, alphas, searches, patched_correct = {}, {}, [], {}, {}
    for i, name in enumerate(names):
        # The objective sees only task i as patching (plus the support tasks): the other tasks
        # of the list must not influence the choice whose transfer to them is measured.
        sub = pool.with_support([name])  # the bundle goes along (flyp: heads rebuilt from the text tower)
        one = MultitaskRun(sub, ctx.theta_zs, cfg.selection, cfg.finetune, out, resume, ctx.fingerprint)
        theta_ft = one.finetune_from(ctx.theta_zs, [name], f"{i}-{name}/finetune")
        line = Line.between(ctx.theta_zs, theta_ft, f"transfer/{i}/")
        res = choose(sub, line, cfg.selection, [name], one.support, reference=one.reference())
        at_alpha = pool.evaluate_state(line.at(res.alpha), "test")
        patched[name] = {k: v["accuracy"] for k, v in at_alpha.items()}
        patched_correct[name] = {k: v["correct"] for k, v in at_alpha.items()}
        finetuned[name] = {k: v["accuracy"] for k, v in pool.evaluate_state(theta_ft, "test").items()}
        alphas.append(res.alpha)
        searches[name] = res.record() | {"alpha": res.alpha, "n_model_evals": res.n_model_evals, "sweep": res.sweep}
    zs_acc = {k: v["accuracy"] for k, v in zs.items()}
    matrix = delta_matrix(zs_acc, patched, names)
    matrix_ft = delta_matrix(zs_acc, finetuned, names)
    table = matrix_markdown(matrix, names, alphas)
    plot_heatmap(matrix, names, out / "transfer.png")
    summary = {
        "model": cfg.model,
        "tasks": names,
        "support_tasks": [t.name for t in cfg.support_tasks],
        "zeroshot_test": zs_acc,
        "alphas": dict(zip(names, alphas, strict=True)),
        "delta_points": {"patched": matrix, "finetuned": matrix_ft},
        "patched_test": patched,
        "finetuned_test": finetuned,
        "patched_correct": patched_correct,
        "zeroshot_correct": {k: v["correct"] for k, v in zs.items()},
        "test_n": {k: v["n"] for k, v in zs.items()},
        "searches": searches,
        "timing_s": {"total": round(time.time() - t0, 2)},
    }
    write_text_atomic(
        out / "transfer.md",
        "# Broad transfer\n\nTest accuracy change (points) of the model patched on each row's task, at the alpha "
        f"chosen on its validation split (`{cfg.selection.strategy}` on `{cfg.selection.rule_name}`).\n\n{table}\n\n"
        f"Fine-tuned end (alpha = 1):\n\n{matrix_markdown(matrix_ft, names, [1.0] * len(names))}\n\n![transfer](transfer.png)\n",
    )
    write_json_atomic(out / "transfer.json", summary)
    summary["table"] = table
    return summary

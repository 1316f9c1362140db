"""``paint patch``: PAINT end to end on any Hugging Face CLIP checkpoint.

load and check every task -> open the run directory -> prepare the task pool -> the patch
operation (:mod:`paint.pipeline.operation`: fine-tune the image tower with the zero-shot heads
frozen -> choose alpha on validation -> test at 0, the chosen alpha and 1) -> write the patched HF checkpoint, results, resolved config,
Markdown summary, ``summary.json`` and the trade-off plot.

Only theta_zs (the base model) and theta_ft (``finetune/checkpoint/trainable.safetensors``)
are kept on disk; any theta_alpha is rebuilt from them (``paint interpolate``).
Every evaluation goes to ``results.jsonl``; with ``--resume`` a run continues where it
stopped (training from its last epoch checkpoint, the sweep from its last result).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from paint.config import first_duplicate
from paint.data.spec import TaskSpec
from paint.errors import PaintError
from paint.models.clip import ClipBundle, save_clip
from paint.models.families import family_of
from paint.pipeline.combine import PER_TASK, CombineConfig
from paint.pipeline.multitask import run_patch_multitask
from paint.pipeline.operation import (
    Choice,
    choose,
    chosen_state,
    finetune_tower,
    save_heads,
    start_state,
    test_at,
)
from paint.pipeline.pool import Line, PoolTask, TaskPool, start_pool
from paint.pipeline.report import model_card, plot_tradeoff, points, sweep_table, test_table, write_markdown
from paint.pipeline.run import (
    SUMMARY,
    ModelRunConfig,
    check_output_dir,
    check_recipe_fits_selection,
    run_fingerprint,
)
from paint.pipeline.rundir import run_scope
from paint.train.checkpoint import TRAINABLE, load_checkpoint_file
from paint.train.finetune import FinetuneConfig
from paint.types import StateDict
from paint.utils import hash_tensors, write_json_atomic
from paint.weights.ops import complete_state


class PatchConfig(ModelRunConfig):
    """Everything ``paint patch`` needs; written back resolved as ``config.yaml``.

    One patching task: fine-tune, choose alpha on validation (``selection``), test. Several
    patching tasks: the paper's multi-task modes (``modes``: joint, sequential, parallel),
    compared in a table, parallel mode combining its fine-tunes as ``combine`` says (see
    :mod:`paint.pipeline.multitask`, as ``paint multitask``).

    Example:
        >>> from paint import PatchConfig
        >>> cfg = PatchConfig(output_dir="runs/digits", patch_tasks=["digits"], support_tasks=["shapes", "colours"])
        >>> cfg.selection.rule_name, cfg.finetune.epochs
        ('constrained-mean', 10)
    """

    patch_tasks: list[TaskSpec] = Field(min_length=1)
    support_tasks: list[TaskSpec] = Field(default_factory=list)
    modes: list[Literal["joint", "sequential", "parallel"]] = Field(
        default_factory=lambda: ["joint"], min_length=1, description="multi-task modes, used with several patch_tasks"
    )
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    combine: CombineConfig = Field(
        default_factory=CombineConfig,
        description="several patch_tasks: parallel mode's combine step, as in paint multitask (per_task by default)",
    )

    @field_validator("modes")
    @classmethod
    def _distinct_modes(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("a mode is listed twice")
        return v

    @model_validator(mode="after")
    def _unique(self):
        names = [t.name for t in self.patch_tasks + self.support_tasks]
        dup = first_duplicate(names)
        if dup:
            raise ValueError(f"task {dup!r} is listed twice")
        check_recipe_fits_selection(self.finetune, self.selection)
        if self.combine.method != PER_TASK and len(self.patch_tasks) == 1:
            raise ValueError("combine merges the fine-tunes of several patch_tasks (parallel mode); this run has one")
        self.combine.check_run(self.modes, len(self.patch_tasks))
        return self


def patch_fingerprint(cfg: PatchConfig, bundle: ClipBundle, tasks: Sequence[PoolTask]) -> str:
    """What fine-tuning depends on: a checkpoint made under another fingerprint is refused on resume."""
    patch = [t for t in tasks if t.role == "patch"]
    parts = [bundle.text_identity, hash_tensors(bundle.image_tower_state()), cfg.finetune.identity()]
    for t in patch:
        parts += [t.name, t.identities["train"], *t.classnames, *t.templates]
    return run_fingerprint(None, None, *parts)


@run_scope
def run_patch(cfg: PatchConfig, resume: bool = False) -> dict[str, Any]:
    """Run PAINT as configured; return the summary (also written to ``summary.json``).

    Example:
        >>> from paint import PatchConfig, run_patch
        >>> cfg = PatchConfig(output_dir="runs/digits", patch_tasks=["digits"], support_tasks=["shapes"])
        >>> summary = run_patch(cfg)  # doctest: +SKIP
        >>> summary["alpha"], summary["test"]["digits"]["patched"]  # doctest: +SKIP
    """
    if len(cfg.patch_tasks) > 1:
        return run_patch_multitask(cfg, resume)
    t_start = time.time()
    out = Path(cfg.output_dir)
    check_output_dir(out, resume)
    pool, bundle = start_pool(cfg, out, resume, cfg.patch_tasks, cfg.support_tasks)
    names_p, names_s = pool.names("patch"), pool.names("support")
    theta_zs = start_state(pool, bundle.image_tower_copy(), cfg.finetune)  # + text tower (flyp), heads (lp-ft)
    fp = patch_fingerprint(cfg, bundle, pool.tasks)
    theta_ft, fit = finetune_tower(pool, theta_zs, names_p, cfg.finetune, out / "finetune", resume, fp)
    t_ft = time.time()
    from accelerate import PartialState  # multi-process fine-tuning: rank 0 alone chooses and writes

    proc = PartialState()
    if not proc.is_main_process:
        proc.wait_for_everyone()
        return {}
    line = Line.between(theta_zs, theta_ft)
    choice = choose(pool, line, cfg.selection, names_p, names_s, per_block=True)
    t_sweep = time.time()
    chosen = chosen_state(line, choice)  # theta(alpha) or per-block; flyp: + text tower; lp-ft: + heads
    test = test_chosen(pool, line, choice, chosen)
    patched, heads = chosen.model_tensors(), chosen.heads
    pool.load(patched)
    timing = {"finetune": t_ft - t_start, "sweep": t_sweep - t_ft, "total": time.time() - t_start}
    summary = patch_summary(cfg, pool, choice, test, fit, timing)
    if heads:  # lp-ft: the patching task's head at the chosen alpha (a CLIP checkpoint has no place for it)
        save_heads(heads, out / "patched-heads.safetensors")
        summary["outputs"]["heads"] = "patched-heads.safetensors"
    write_reports(out, summary, bundle, {**bundle.model.state_dict(), **patched})
    proc.wait_for_everyone()
    return summary


def test_chosen(pool: TaskPool, line: Line, choice: Choice, chosen: dict) -> dict[str, dict]:
    """Test accuracy at zero-shot, fine-tuned and the chosen state (off the line for per-block alphas)."""
    if choice.block_alphas is None:
        return test_at(pool, line, {"zeroshot": 0.0, "finetuned": 1.0, "patched": choice.alpha})
    test = test_at(pool, line, {"zeroshot": 0.0, "finetuned": 1.0})
    for name, acc in pool.evaluate_state(chosen, "test").items():
        test[name]["patched"] = acc["accuracy"]
    return test


def patch_summary(
    cfg: PatchConfig, pool: TaskPool, choice: Choice, test: dict, fit: Any, timing: dict[str, float]
) -> dict[str, Any]:
    """``summary.json`` of a single-task patch run (see the README for the guaranteed fields)."""
    return {
        "alpha": choice.alpha,
        "sweep": choice.sweep,
        "test": test,
        "selection": choice.record(),
        **({"block_alphas": choice.block_alphas[0]} if choice.block_alphas is not None else {}),
        "model": cfg.model,
        "model_family": family_of(pool.model).name,
        "patch_tasks": pool.names("patch"),
        "support_tasks": pool.names("support"),
        "splits": {t.name: t.split_info for t in pool.tasks},
        "finetune": {
            "recipe": fit.recipe,
            "trainable_params": fit.trainable_params,
            **({"recipe_info": fit.info} if fit.info else {}),
            "history": fit.history,
            "steps": fit.steps,
            "resumed_from_epoch": fit.resumed_from_epoch,
            "runtime": fit.runtime,
        },
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "outputs": {
            "model": "model",
            "results": "results.jsonl",
            "config": "config.yaml",
            "plot": "tradeoff.png",
            "report": "summary.md",
        },
    }


def write_reports(out: Path, summary: dict[str, Any], bundle: ClipBundle, state: dict[str, torch.Tensor]) -> None:
    """Checkpoint with model card, plot, Markdown summary; ``summary.json`` last (it marks a finished run)."""
    config_yaml = (out / "config.yaml").read_text()
    save_clip(bundle, out / "model", state_dict=state)
    write_markdown(out / "model" / "README.md", model_card(summary, config_yaml))
    patch, support = summary["patch_tasks"], summary["support_tasks"]
    plot_tradeoff(summary["sweep"], patch, support, out / "tradeoff.png", chosen=summary["alpha"])
    write_markdown(out / "summary.md", patch_markdown(summary))
    write_json_atomic(out / SUMMARY, json.loads(json.dumps(summary, default=float)))


def patch_markdown(summary: dict[str, Any]) -> str:
    """``summary.md`` of a single-task patch run."""
    patch, support = summary["patch_tasks"], summary["support_tasks"]
    cands = summary["selection"]["candidates"]
    rules = ", ".join(f"`{name}` {c['alpha']:.3g}" for name, c in cands.items())
    return "\n".join(
        [
            f"# PAINT: patching {', '.join(patch)}",
            "",
            f"Model `{summary['model']}`; chosen alpha **{summary['alpha']:.3g}**"
            f"{' (mean of the per-block alphas)' if 'block_alphas' in summary else ''} by the `{summary['selection']['rule']}` rule "
            f"on validation. All rules (support within {points(summary['selection']['epsilon'])} for the constrained ones): "
            f"{rules}.",
            *(
                [
                    "Per-block alphas (the `alpha` above is their mean): "
                    + ", ".join(f"`{b}` {a:.3g}" for b, a in summary["block_alphas"].items())
                    + ".",
                ]
                if "block_alphas" in summary
                else []
            ),
            "",
            "## Test accuracy (%)",
            "",
            test_table(summary["test"]),
            "",
            "## Validation sweep (accuracy %)",
            "",
            *race_note(summary["selection"]),
            sweep_table(summary["sweep"], patch + support, summary["alpha"]),
            "",
            "![trade-off](tradeoff.png)",
            "",
        ]
    )


def race_note(selection: dict[str, Any]) -> list[str]:
    """The lines that say a raced sweep lists only the alphas read on every image (none for a plain sweep).

    Example:
        >>> race_note({"rule": "screened-race:grid/constrained-mean", "search": {"fraction_read": 0.3512}})[0][:39]
        'The grid was raced (35.1% of the images'
        >>> race_note({"rule": "constrained-mean"})
        []
    """
    if "race:" not in selection["rule"]:
        return []
    read = (selection.get("search") or {}).get("fraction_read")
    share = f" ({100 * read:.1f}% of the images the full grid reads)" if read is not None else ""
    return [
        f"The grid was raced{share}: the table lists the alphas read on every image, and the other rules "
        "above are taken on these alphas only. `--no-race` (`selection.race: null`) evaluates every alpha.",
        "",
    ]


def load_finetuned(run_dir: str | Path, theta_zs: StateDict) -> dict[str, torch.Tensor]:
    """theta_ft of a finished ``paint patch`` run: its fine-tuned image tower, checksums verified.

    The run keeps only the trained tensors (``finetune/checkpoint/trainable.safetensors``); the
    buffers it lacks come from ``theta_zs`` (the base model's image tower, ``bundle.image_tower_copy()``).
    A damaged checkpoint is a one-line :class:`PaintError`, never weights mixed in silently.

    Example:
        >>> from paint import interpolate, load_clip, load_finetuned
        >>> theta_zs = load_clip("paint:default").image_tower_copy()
        >>> theta_ft = load_finetuned("runs/patch-digits", theta_zs)  # doctest: +SKIP
        >>> theta = interpolate(theta_zs, theta_ft, 0.4)  # doctest: +SKIP
    """

    path = Path(run_dir) / "finetune" / "checkpoint" / TRAINABLE
    if not path.is_file():
        raise PaintError(f"{run_dir} holds no fine-tuned checkpoint ({path} is missing): is it a paint patch run?")
    trained = load_checkpoint_file(path)
    return complete_state(theta_zs, {k: v for k, v in trained.items() if k in theta_zs})

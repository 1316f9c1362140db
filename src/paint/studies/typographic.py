"""Typographic attacks: write a misleading class name on images, measure, and patch.

A typographic attack writes another class's name on an image (a circle labelled "star");
a model that reads text, as CLIP does, then predicts the written word. PAINT fine-tunes on
attacked images with the *true* label and interpolates, which makes the model robust to the
attack on other tasks too while clean accuracy holds.

Pieces:

- :class:`AttackStyle` and :func:`render_text` (from :mod:`paint.world.lettering`, which the
  world's corpus shares): the word on any image, with font, size, colour, position and
  opacity; the pixels are a pure function of (image, word, style, seed).
- :func:`attack_texts` and :class:`AttackedSplit`: a seeded choice of a *different* class
  per image and a lazily rendered attacked view of any split.
- :func:`write_attacked_dataset` / :func:`read_attacked_dir`: the file-name convention of the
  paper's released typographic data, ``label=<true class>_text=<written class>.png`` (an
  ``_<index>`` suffix is added when a pair repeats), read back as a split with labels from
  ``label=`` and the written class kept as ``texts``.
- :func:`attack_metrics`: clean and attacked accuracy and the attack success rate.
- :func:`run_typographic`: the case study (patch on one task's attacked images, measure on
  held-out attacked images of other tasks).

Attack success rate (ASR) here = among attacked images whose *clean* version the model
classifies correctly, the fraction it classifies as the written class. ``text_rate`` is the
same fraction over all attacked images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from paint.config import first_duplicate
from paint.data.preprocess import preprocess_split
from paint.data.spec import TaskSpec
from paint.data.task import Task
from paint.errors import PaintError
from paint.evaluation.results import predict
from paint.models.heads import zeroshot_head
from paint.pipeline.operation import outcome_record, patch_operation
from paint.pipeline.pool import PoolTask, load_model_run, new_pool
from paint.pipeline.run import ModelRunConfig, open_run, run_fingerprint
from paint.pipeline.rundir import run_scope
from paint.pipeline.seeds import SeedsSetting, fmt_fraction, interval_leaves, run_seeds
from paint.studies.attacks import (
    HELD_OUT_STYLES,
    AttackedSplit,
    TypographicSplit,
    attack_metrics,
    read_attacked_dir,
    write_attacked_dataset,
)
from paint.studies.common import capped, demo_finetune
from paint.studies.typographic_report import typographic_table, write_typographic_reports
from paint.train.finetune import FinetuneConfig, TrainingSet
from paint.utils import hash_tensors, write_json_atomic, write_text_atomic
from paint.world.lettering import AttackStyle


class TypographicConfig(ModelRunConfig, SeedsSetting):
    """``paint typographic run``: patch on one task's attacked images, test on other tasks'.

    The patched task is chosen by ``patch_task``; alpha is selected on validation using the
    patch task's attacked images (the patching objective) and the clean validation images of
    the patch task, of ``support_tasks`` and (``transfer_clean_in_selection``) of the transfer
    tasks (the support constraint: clean accuracy must hold). ``transfer_tasks`` are never
    trained on, and their *attacked* images are never used to choose alpha: their attacked
    test images measure whether the patch transfers. By default the constraint bounds the mean
    of those clean accuracies (``constraint``), and fine-tuning sees every training image both
    clean and attacked (``train_on: both``): trained on attacked images alone, the fine-tuned
    model loses clean accuracy on the patch task itself, which caps alpha. ``test_styles`` are
    further lettering styles, never trained on nor used to choose alpha: the test sets of the
    patch and transfer tasks are attacked in each of them too (same written words), to see
    whether the patch holds beyond the style it was trained on.
    """

    patch_task: TaskSpec = Field(default_factory=lambda: TaskSpec(name="shapes"))
    transfer_tasks: list[TaskSpec] = Field(
        default_factory=lambda: [TaskSpec(name="colours"), TaskSpec(name="rendered-digits")]
    )
    support_tasks: list[TaskSpec] = Field(default_factory=list)
    transfer_clean_in_selection: bool = True
    attack: AttackStyle = Field(default_factory=AttackStyle)
    test_styles: dict[str, AttackStyle] = Field(default_factory=lambda: dict(HELD_OUT_STYLES))
    seed: int = 0
    train_on: Literal["attacked", "both"] = "both"
    max_train: int | None = Field(None, ge=1)
    max_eval: int | None = Field(None, ge=1)
    finetune: FinetuneConfig = Field(default_factory=lambda: demo_finetune(10))
    write_images: bool = True

    @model_validator(mode="after")
    def _distinct(self):
        names = [self.patch_task.name] + [t.name for t in self.transfer_tasks + self.support_tasks]
        dup = first_duplicate(names)
        if dup:
            raise ValueError(f"task {dup!r} is listed twice (patch, transfer and support tasks must differ)")
        return self


@run_scope
def run_typographic(cfg: TypographicConfig, resume: bool = False) -> dict[str, Any]:
    """Run the case study (once, or per seed with ``seeds``); return the summary (``summary.json``)."""
    if cfg.seeds is None:
        return run_typographic_once(cfg, resume)
    runs = run_seeds(cfg, resume, "summary.json", run_typographic_once)
    return write_seeded_typographic(cfg, runs)


def write_seeded_typographic(cfg: TypographicConfig, runs: dict[int, Any]) -> dict[str, Any]:
    """The parent's ``summary.md`` / ``summary.json``: the test table as mean ± t over seeds.

    A seed also draws the attack's written words, so the seeds' test sets differ: the spread is over
    whole repetitions (fine-tune, validation split, attack), not paired over images.
    """
    seeds = sorted(runs)
    test = interval_leaves([runs[s]["test"] for s in seeds])
    table = typographic_table(test, fmt_fraction, lambda v: fmt_fraction(v, 1.0, 2))
    summary = {
        "model": cfg.model,
        "seeds": seeds,
        "patch_task": runs[seeds[0]]["patch_task"],
        "alphas": [runs[s]["alpha"] for s in seeds],
        "test": test,
        "per_seed": {str(s): f"seed-{s}/summary.json" for s in seeds},
    }
    out = Path(cfg.output_dir)

    write_text_atomic(
        out / "summary.md",
        f"# Typographic attack over seeds {seeds}: patched on {summary['patch_task']}\n\nTest (%), mean ± the 95% "
        "Student-t half-width over seeds (each seed: fine-tuning seed, validation split and the attack's words).\n\n"
        f"{table}\n",
    )
    write_json_atomic(out / "summary.json", summary)
    return summary | {"table": table}


def run_typographic_once(cfg: TypographicConfig, resume: bool = False) -> dict[str, Any]:
    """Run the typographic-attack case study; return the summary (also in ``summary.json``).

    Steps: build attacked views of every task (the word = another class, seeded); write the
    attacked test sets in the paper's file convention and read them back; the patch operation
    (fine-tune the image tower on the patch task's clean + attacked training images, true labels,
    head frozen; choose alpha on validation); report clean and attacked test accuracy and ASR at
    alpha 0, the chosen alpha and 1, for the patch task and the held-out transfer tasks.
    """
    t0 = time.time()
    out = Path(cfg.output_dir)
    roles = [("patch", [cfg.patch_task]), ("transfer", cfg.transfer_tasks), ("support", cfg.support_tasks)]
    bundle, loaded = load_model_run(cfg, roles)
    open_run(out, cfg, resume)
    views = [prepare_views(cfg, bundle, role, task, k, out, resume) for k, (role, task, _) in enumerate(loaded)]
    pool = new_pool(bundle, [t for v in views for t in v.pool_tasks], out, cfg.eval_batch_size)
    theta_zs = bundle.image_tower_copy()
    parts = (bundle.text_identity, hash_tensors(theta_zs))
    fingerprint = run_fingerprint("typographic-v1", cfg, *parts, exclude={"test_styles"})  # styles: test only
    p = cfg.patch_task.name
    patch_names, support_names = selection_tasks(cfg)
    train = [next(v.train for v in views if v.train is not None)]
    ft_dir = out / "finetune"
    res = patch_operation(
        pool, theta_zs, patch_names, support_names, cfg.finetune, cfg.selection, ft_dir, resume, fingerprint, train
    )
    test = test_at_alphas(pool, res.line, res.choice.alpha, views, cfg.eval_batch_size)
    pool.load(theta_zs)
    summary = outcome_record(cfg.model, bundle.text_identity, res, patch_names, support_names, t0) | {
        "patch_task": p,
        "transfer_tasks": [t.name for t in cfg.transfer_tasks],
        "support_tasks": [t.name for t in cfg.support_tasks],
        "test": test,
        "asr_definition": "among attacked test images whose clean version is classified correctly, "
        "the fraction classified as the written class",
        "test_styles": {n: st.model_dump(mode="json") for n, st in cfg.test_styles.items()},
    }
    write_typographic_reports(out, summary)
    return summary


def selection_tasks(cfg: TypographicConfig) -> tuple[list[str], list[str]]:
    """The pool tasks alpha is chosen on: the patch task attacked (patching); its clean images and the
    clean images of the support (and, with ``transfer_clean_in_selection``, transfer) tasks (support)."""
    p = cfg.patch_task.name
    clean_support = cfg.support_tasks + (cfg.transfer_tasks if cfg.transfer_clean_in_selection else [])
    return [f"{p}/attacked"], [f"{p}/clean"] + [f"{t.name}/clean" for t in clean_support]


def test_at_alphas(
    pool: Any, line: Any, chosen: float, views: Sequence[TaskViews], batch_size: int
) -> dict[str, dict[str, Any]]:
    """Every task's test metrics at zero-shot, the chosen alpha and the fine-tuned end (each state loaded once)."""
    test: dict[str, dict[str, Any]] = {v.name: {"role": v.role} for v in views}
    for label, a in {"zeroshot": 0.0, "patched": chosen, "finetuned": 1.0}.items():
        pool.load(line.at(a))
        for v in views:
            test[v.name][label] = test_views(pool, v, batch_size) | {"alpha": a}
    return test


@dataclass
class TaskViews:
    """One task's clean and attacked views: pool entries for the sweep, test images, training set."""

    name: str
    role: str
    pool_tasks: list[Any]
    head: torch.Tensor
    test: dict[str, Any]  # clean, attacked, labels, texts, styles: {name: (images, texts)}
    train: Any = None  # TrainingSet of the patch task


def prepare_views(
    cfg: TypographicConfig, bundle: Any, role: str, task: Task, k: int, out: Path, resume: bool
) -> TaskViews:
    """Preprocess a task's clean and attacked splits (cached) and build its head."""

    cache = cfg.cache_path / "images"

    def pre(split: Any, cached: bool = True) -> torch.Tensor:
        return torch.as_tensor(
            preprocess_split(
                split, bundle.spec, cache_dir=cache if cached else None, progress=True, num_workers=cfg.num_workers
            )
        )

    head = zeroshot_head(bundle, task.classnames, task.templates, cache_dir=cfg.cache_path)
    clean = {s: capped(task.split(s), cfg.max_eval, cfg.seed, 0xCA9) for s in ("val", "test")}
    attacked = {
        s: AttackedSplit(clean[s], task.classnames, cfg.attack, cfg.seed * 7919 + 31 * k + i)
        for i, s in enumerate(("val", "test"))
    }
    labels = {s: np.asarray(clean[s].labels) for s in clean}
    imgs_c = {s: pre(clean[s]) for s in clean}
    imgs_a = {"val": pre(attacked["val"])}
    if cfg.write_images and role != "support":
        back = write_and_read_back(attacked["test"], out / "data" / task.name / "test", task.classnames, resume)
        imgs_a["test"], texts = pre(back, cached=False), back.texts
    else:
        imgs_a["test"], texts = pre(attacked["test"]), attacked["test"].texts
    pool_tasks = [
        PoolTask(f"{task.name}/{kind}", role, task.classnames, task.templates, imgs, labels, {}, head, {})
        for kind, imgs in (("clean", imgs_c), ("attacked", imgs_a))
    ]
    test = {"clean": imgs_c["test"], "attacked": imgs_a["test"], "labels": labels["test"], "texts": texts, "styles": {}}
    if role != "support":
        for n, st in cfg.test_styles.items():
            styled = AttackedSplit(clean["test"], task.classnames, st, attacked["test"].seed)
            test["styles"][n] = (pre(styled), styled.texts)
    views = TaskViews(task.name, role, pool_tasks, head, test)
    if role == "patch":
        views.train = attacked_training_set(cfg, task, head, pre)
    return views


def write_and_read_back(
    split: AttackedSplit, folder: Path, classnames: Sequence[str], resume: bool
) -> TypographicSplit:
    """The attacked test set goes to disk in the paper's convention and is read back from there."""
    if not (resume and (folder / "attack.json").is_file()):
        write_attacked_dataset(split, folder)
    back, _ = read_attacked_dir(folder, classnames)
    if not (np.array_equal(back.labels, split.labels) and np.array_equal(back.texts, split.texts)):
        raise PaintError(
            f"{folder}: the attacked images read back do not match what was written; delete the folder and rerun"
        )
    return back


def attacked_training_set(cfg: TypographicConfig, task: Task, head: torch.Tensor, pre: Any) -> Any:
    """The patch task's training images, attacked (and clean too with ``train_on: both``), true labels."""

    base_train = capped(task.split("train"), cfg.max_train, cfg.seed, 0xCA9)
    x = pre(AttackedSplit(base_train, task.classnames, cfg.attack, cfg.seed * 7919 + 7))
    y = np.asarray(base_train.labels)
    if cfg.train_on == "both":
        x, y = torch.cat([pre(base_train), x]), np.concatenate([y, y])
    return TrainingSet(task.name, x, y, head)


def test_views(pool: Any, views: TaskViews, batch_size: int) -> dict[str, Any]:
    """Clean and attacked test metrics (and per held-out style) of one task at the model's current image tower."""

    t = views.test
    lc = predict(pool.model, views.head, t["clean"], pool.spec, batch_size)
    la = predict(pool.model, views.head, t["attacked"], pool.spec, batch_size)
    row = attack_metrics(lc, la, t["labels"], t["texts"])
    if t["styles"]:
        row["styles"] = {
            n: attack_metrics(lc, predict(pool.model, views.head, imgs, pool.spec, batch_size), t["labels"], texts)
            for n, (imgs, texts) in t["styles"].items()
        }
    return row

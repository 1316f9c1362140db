"""Seeds: a comparison repeated as full runs, one per seed, kept on resume.

A seed is a full repetition: the fine-tuning seed and the validation split carved from each
patching task's training data (``split_seed``). The test splits are the same for every seed, so
two methods can be compared image by image (:func:`paint.stats.paired_difference`). Every
command that compares things takes the same ``seeds:`` setting (:data:`Seeds`): a count (seeds
0 .. n-1) or a list.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field

from paint.config import StrictModel
from paint.data.spec import TaskSpec
from paint.pipeline.run import check_output_dir
from paint.pipeline.rundir import DEFAULT_IGNORED, RunDir
from paint.stats import Correct, decode_correct, image_interval, paired_difference, seed_interval


def _check_seeds(v: int | list[int] | None) -> int | list[int] | None:
    if isinstance(v, int) and v < 1:
        raise ValueError("seeds must be a count >= 1 or a non-empty list")
    if isinstance(v, list) and (not v or len(set(v)) != len(v)):
        raise ValueError("seeds must be a non-empty list without repeats")
    if isinstance(v, list) and any(s < 0 for s in v):
        raise ValueError("seeds must be non-negative")
    return v


Seeds = Annotated[int | list[int], AfterValidator(_check_seeds)]
OptionalSeeds = Annotated[int | list[int] | None, AfterValidator(_check_seeds)]


class SeedsSetting(StrictModel):
    """The ``seeds:`` field every comparing command's config shares (one definition, one description)."""

    seeds: OptionalSeeds = Field(
        None,
        description="repeat the whole run per seed (a count: 0..n-1, or a list), each a full repetition in "
        "<output_dir>/seed-<s>/ (the fine-tuning seed, the patching tasks' split_seed, and a study's own seed); "
        "the reports give each figure with its interval over seeds; null: one run",
    )


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """The seeds a setting names: a count n is 0 .. n-1.

    Example:
        >>> seed_list(3), seed_list([4, 7])
        ([0, 1, 2], [4, 7])
    """
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def seeded_tasks(tasks: Sequence[TaskSpec], seed: int) -> list[TaskSpec]:
    """The patching tasks with their validation split drawn by ``seed`` (their test split does not move)."""
    return [t.model_copy(update={"split_seed": seed}) for t in tasks]


def seed_dir(out: str | Path, seed: int) -> Path:
    """Where one seed's run lives: ``<out>/seed-<s>``."""
    return Path(out) / f"seed-{seed}"


def config_for_seed(cfg: Any, seed: int) -> Any:
    """One seed's run of a seeded config: its ``seed-<s>/`` directory, the shared image cache, the seed
    applied to the fine-tuning and the patching tasks' validation splits, and no ``seeds`` of its own."""
    update: dict[str, Any] = {
        "output_dir": str(seed_dir(cfg.output_dir, seed)),
        "cache_dir": str(cfg.cache_path),
        "finetune": cfg.finetune.model_copy(update={"seed": seed}),
        "seeds": None,
    }
    fields = type(cfg).model_fields
    for field in ("patch_tasks", "tasks"):  # the tasks that are fine-tuned on (``tasks``: paint transfer)
        if field in fields:
            update[field] = seeded_tasks(getattr(cfg, field), seed)
    for field in ("task", "patch_task"):  # the case studies' one patching task
        if field in fields:
            update[field] = seeded_tasks([getattr(cfg, field)], seed)[0]
    if "seed" in fields:  # the case studies' own draws (attack words, caps)
        update["seed"] = seed
    return cfg.model_copy(update=update)


def run_seeds(cfg: Any, resume: bool, marker: str, run_one: Callable[[Any, bool], dict[str, Any]]) -> dict[int, Any]:
    """Open the parent directory (``seeds`` may grow on resume), then run every seed not yet finished.

    A seed whose ``<out>/seed-<s>/<marker>`` exists is read back on resume; an unfinished one continues.
    Returns each seed's summary, by seed.
    """

    out = Path(cfg.output_dir)
    check_output_dir(out, resume, marker)
    RunDir(out, marker).start(cfg, resume, ignore=DEFAULT_IGNORED | {"seeds"})
    runs: dict[int, Any] = {}
    for seed in seed_list(cfg.seeds):
        sub = config_for_seed(cfg, seed)
        done = Path(sub.output_dir) / marker
        runs[seed] = json.loads(done.read_text()) if resume and done.is_file() else run_one(sub, resume)
    return runs


# ----------------------------------------------------------------------------- one method's test record


def bound_on_test(
    test: Mapping[str, float], zeroshot: Mapping[str, float], support: Sequence[str], epsilon: float, constraint: str
) -> dict[str, Any]:
    """Whether a choice holds the selection's support bound on the test split (it holds on validation).

    ``drop``: the support change in points (their mean, or the worst task with ``constraint: each``).
    """
    if not support:
        return {"holds": True, "drop": 0.0, "epsilon": epsilon}
    changes = [100 * (test[n] - zeroshot[n]) for n in support]
    drop = float(np.mean(changes)) if constraint == "mean" else float(min(changes))
    return {"holds": bool(drop >= -epsilon - 1e-9), "drop": round(drop, 3), "epsilon": epsilon}


def test_record(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The part of a method's row a seeded report needs: per-task accuracy, per-image correctness, image counts."""
    return {
        "test": {n: m["accuracy"] for n, m in metrics.items()},
        "test_correct": {n: m["correct"] for n, m in metrics.items()},
        "test_n": {n: m["n"] for n, m in metrics.items()},
    }


# ----------------------------------------------------------------------------- over seeds

Row = Mapping[str, Any]  # one method in one seed: label, alphas, test, test_correct, test_n, bound_on_test


def correct_of(rows: Sequence[Row], tasks: Sequence[str]) -> Correct:
    """[seed][task] per-image correctness of one method, from its row in each seed."""
    return [[decode_correct(r["test_correct"][t], int(r["test_n"][t])) for t in tasks] for r in rows]


def method_summary(
    rows: Sequence[Row], reference: Sequence[Row] | None, patch: Sequence[str], support: Sequence[str]
) -> dict[str, Any]:
    """One method over seeds: each figure's mean with its t interval over seeds and the test images' own
    error, how many seeds kept the support bound on test, and the paired differences against ``reference``
    (the reference method's rows in the same seeds; None for the reference itself)."""
    groups = {"patch": patch, "support": support} if support else {"patch": patch}
    rec: dict[str, Any] = {
        "label": rows[0]["label"],
        "alphas": [r.get("alphas") for r in rows],
        "per_task": {t: seed_interval([100 * r["test"][t] for r in rows]).record() for t in (*patch, *support)},
    }
    for group, tasks in groups.items():
        rec[group] = {
            "seeds": seed_interval([100 * float(np.mean([r["test"][t] for t in tasks])) for r in rows]).record(),
            "images": image_interval(correct_of(rows, tasks)).record(),
        }
    bounds = [r["bound_on_test"] for r in rows if r.get("bound_on_test") is not None]
    if bounds:
        held = [bool(b["holds"]) for b in bounds]
        rec["bound_on_test"] = {
            "held": sum(held),
            "of": len(held),
            "fraction": sum(held) / len(held),
            "drops": [b["drop"] for b in bounds],
        }
    if reference is not None:
        rec["vs_reference"] = {
            g: paired_difference(correct_of(rows, tasks), correct_of(reference, tasks)).record()
            for g, tasks in groups.items()
        }
    return rec


def summarise_methods(
    per_seed: Mapping[int, Sequence[Row]],
    labels: Sequence[str],
    reference: str,
    patch: Sequence[str],
    support: Sequence[str],
) -> list[dict[str, Any]]:
    """:func:`method_summary` of every label, paired against ``reference``; seeds in increasing order."""
    seeds = sorted(per_seed)

    def rows(label: str) -> list[Row]:
        return [next(r for r in per_seed[s] if r["label"] == label) for s in seeds]

    ref = rows(reference)
    return [method_summary(rows(lab), None if lab == reference else ref, patch, support) for lab in labels]


def fmt_interval(rec: Mapping[str, Any] | None, images: Mapping[str, Any] | None = None) -> str:
    """``84.5 ± 1.2`` (t over seeds; no ± below two seeds), with ``(± 2.2)`` for the test images' own error."""
    if rec is None:
        return "-"
    low, high = rec.get("low"), rec.get("high")
    cell = f"{rec['mean']:.1f}"
    if low is not None and high is not None:
        cell += f" ± {(high - low) / 2:.1f}"
    if images is not None:
        cell += f" (± {(images['high'] - images['low']) / 2:.1f})"
    return cell


def fmt_difference(rec: Mapping[str, Any] | None) -> str:
    """``+7.3 [+5.1, +9.5] *``: the mean paired difference, its 95% interval, ``*`` when established."""
    if rec is None:
        return "-"
    mark = " *" if rec["established"] else ""
    return f"{rec['mean']:+.1f} [{rec['low']:+.1f}, {rec['high']:+.1f}]{mark}"


def fmt_alphas(alphas: Sequence[Any]) -> str:
    """Each seed's choice: ``0.4, 0.5, 0.4``; a vector per seed as ``(0.4 0.1)``."""

    def one(a: Any) -> str:
        if isinstance(a, (list, tuple)) and len(a) == 1:
            return f"{a[0]:.3g}"
        if isinstance(a, (list, tuple)):
            return "(" + " ".join(f"{x:.3g}" for x in a) + ")" if a else "-"
        return "-" if a is None else f"{a:.3g}"

    return ", ".join(one(a) for a in alphas)


def seeds_note(n: int, reference: str) -> str:
    """How to read a seeded table."""
    return (
        f"Test accuracy (%) over {n} seed(s): mean ± the 95% Student-t half-width over seeds (none below 2 seeds), "
        "then (± the test split's own 95% sampling error, a bootstrap over its images). Differences against "
        f"`{reference}` are paired (same seeds, same test images): mean [95% interval], the seeds' t interval "
        "(from 3 seeds) and a paired bootstrap over images added in quadrature; `*` marks a difference whose interval "
        "excludes 0 (established). The bound column counts the seeds whose choice keeps the support drop within "
        "epsilon on test (it holds on validation by construction)."
    )


def methods_markdown(
    summaries: Sequence[Mapping[str, Any]],
    reference: str,
    epsilon: float,
    patch: Sequence[str],
    support: Sequence[str],
    zeroshot: Mapping[str, Any] | None = None,
    extra: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The seeded table (groups, paired differences, the bound on test; ``extra`` columns by name, one cell per
    method), then the per-task table. ``zeroshot``: a :func:`method_summary` shown first, without differences."""
    extra = extra or {}
    head = ["method", "alphas (per seed)", "patch", "support mean", f"patch vs {reference}", f"support vs {reference}"]
    head += [f"support bound held on test ({epsilon:g} pt)", *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = ([zeroshot] if zeroshot else []) + list(summaries)
    for i, r in enumerate(rows):
        vs = r.get("vs_reference") or {}
        b = r.get("bound_on_test")
        sup = r.get("support")
        cells = [
            r["label"],
            fmt_alphas(r["alphas"]) if r is not zeroshot else "0",
            fmt_interval(r["patch"]["seeds"], r["patch"]["images"]),
            "-" if sup is None else fmt_interval(sup["seeds"], sup["images"]),
            fmt_difference(vs.get("patch")),
            fmt_difference(vs.get("support")),
            "-" if b is None or r is zeroshot else f"{b['held']}/{b['of']}",
        ]
        k = i - (1 if zeroshot else 0)
        cells += ["-" if k < 0 else col[k] for col in extra.values()]
        lines.append("| " + " | ".join(cells) + " |")
    tasks = [*patch, *support]
    per_task = ["| method | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for r in rows:
        per_task.append(f"| {r['label']} | " + " | ".join(fmt_interval(r["per_task"][t]) for t in tasks) + " |")
    return (
        f"{seeds_note(len(summaries[0]['alphas']), reference)}\n\n"
        + "\n".join(lines)
        + "\n\nPer task (mean ± t half-width over seeds):\n\n"
        + "\n".join(per_task)
    )


def interval_leaves(trees: Sequence[Any]) -> Any:
    """The seeds' summaries merged: every number becomes its :func:`paint.stats.seed_interval` record.

    ``trees`` share one structure (dicts and lists of numbers, as the case studies write); a
    string or bool equal in every seed is kept, one that differs becomes the list of values.

    Example:
        >>> interval_leaves([{"a": 0.8, "k": "x"}, {"a": 0.9, "k": "x"}])["a"]["mean"]
        0.85
    """
    first = trees[0]
    if isinstance(first, Mapping):
        keys = [k for k in first if all(isinstance(t, Mapping) and k in t for t in trees)]
        return {k: interval_leaves([t[k] for t in trees]) for k in keys}
    if isinstance(first, list) and all(isinstance(t, list) and len(t) == len(first) for t in trees):
        return [interval_leaves([t[i] for t in trees]) for i in range(len(first))]
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in trees):
        finite = [float(t) for t in trees if np.isfinite(t)]  # nan: undefined in that seed (e.g. no image to rate)
        return seed_interval(finite).record(6) if finite else None
    return first if all(t == first for t in trees) else list(trees)


def fmt_fraction(rec: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    """An :func:`interval_leaves` record of a fraction as ``84.5 ± 1.2`` (in points; no ± from one seed; ``-``: none)."""
    if not isinstance(rec, Mapping):
        return "-"
    cell = f"{scale * rec['mean']:.{digits}f}"
    if rec.get("low") is not None and rec.get("high") is not None:
        cell += f" ± {scale * (rec['high'] - rec['low']) / 2:.{digits}f}"
    return cell

"""Counting case study: patch on some counts, test on counts never seen in fine-tuning.

PAINT's CLEVR study patches CLIP on counting and tests on counts held out of fine-tuning.
Here the task is the offline world's ``counting`` (images with 1-10 small objects, class
``i`` = ``i + 1`` objects, prompts like "a photo of {} objects"). Some counts are held out:

- *interpolation*: held-out counts inside the range of the fine-tuned counts (a middle count);
- *extrapolation*: held-out counts outside it (the largest count).

Fine-tuning sees only images of the other ("seen") counts, with the frozen zero-shot head
over *all* classes; alpha is chosen on validation images of seen counts and the support
tasks only. Held-out counts appear only in the test report (and in a report-only
validation curve). :func:`counting_splits` makes that guarantee and the tests check it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from paint.data.preprocess import preprocess_split
from paint.data.spec import TaskSpec
from paint.data.task import ImageSplit, SubsetSplit, Task
from paint.errors import PaintError
from paint.evaluation.results import metrics_from_logits, predict
from paint.models.heads import zeroshot_head
from paint.pipeline.operation import outcome_record, patch_operation
from paint.pipeline.pool import PoolTask, load_model_run, new_pool
from paint.pipeline.run import ModelRunConfig, open_run, run_fingerprint
from paint.pipeline.rundir import run_scope
from paint.pipeline.seeds import SeedsSetting, fmt_fraction, interval_leaves, run_seeds
from paint.plotting import new_figure, save_figure
from paint.studies.common import capped, demo_finetune
from paint.train.finetune import FinetuneConfig, TrainingSet
from paint.utils import (
    hash_tensors,
    write_json_atomic,
    write_text_atomic,
)


def _default_support() -> list[TaskSpec]:
    return [TaskSpec(name=n) for n in ("shapes", "colours", "rendered-digits", "backgrounds")]


class CountingConfig(ModelRunConfig, SeedsSetting):
    """``paint counting``: which counts are held out, what is fine-tuned, how alpha is chosen.

    ``counts[i]`` is the number of objects of class ``i`` (default 1..C). ``heldout`` lists
    counts kept out of fine-tuning and of alpha selection.
    """

    task: TaskSpec = Field(default_factory=lambda: TaskSpec(name="counting"))
    counts: list[int] | None = None
    heldout: list[int] = Field(default_factory=lambda: [5, 10], min_length=1)
    support_tasks: list[TaskSpec] = Field(default_factory=_default_support)
    finetune: FinetuneConfig = Field(default_factory=lambda: demo_finetune(15))
    max_train: int | None = Field(None, ge=1)
    max_eval: int | None = Field(None, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _distinct(self):
        if len(set(self.heldout)) != len(self.heldout):
            raise ValueError("heldout lists a count twice")
        names = [self.task.name] + [t.name for t in self.support_tasks]
        if len(set(names)) != len(names):
            raise ValueError("the counting task and the support tasks must all differ")
        return self


# --------------------------------------------------------------------------- splits (pure)


def class_counts(task: Task, counts: Sequence[int] | None = None) -> list[int]:
    """The number of objects of each class: ``counts`` if given, else 1..C."""
    values = list(counts) if counts is not None else list(range(1, len(task.classnames) + 1))
    if len(values) != len(task.classnames):
        raise PaintError(f"counts lists {len(values)} values but task {task.name!r} has {len(task.classnames)} classes")
    if len(set(values)) != len(values):
        raise PaintError("counts must be distinct (one count per class)")
    return values


def heldout_kinds(counts: Sequence[int], heldout: Sequence[int]) -> dict[int, str]:
    """Each held-out count -> "interpolation" (inside the seen range) or "extrapolation"."""
    missing = [c for c in heldout if c not in counts]
    if missing:
        raise PaintError(f"held-out count {missing[0]} is not a class of the task (counts: {list(counts)})")
    seen = [c for c in counts if c not in heldout]
    if len(seen) < 2:
        raise PaintError("hold out fewer counts: fine-tuning needs at least two seen counts")
    lo, hi = min(seen), max(seen)
    return {c: "interpolation" if lo < c < hi else "extrapolation" for c in heldout}


def seen_mask(labels: np.ndarray, counts: Sequence[int], heldout: Sequence[int]) -> np.ndarray:
    """True where an image's count is not held out."""
    held_classes = [i for i, c in enumerate(counts) if c in set(heldout)]
    return ~np.isin(np.asarray(labels), held_classes)


def counting_splits(task: Task, counts: Sequence[int], heldout: Sequence[int]) -> dict[str, ImageSplit]:
    """The splits of the study; held-out counts never reach "train" or "val".

    Returns:
        ``train`` and ``val``: seen counts only (fine-tuning and alpha selection);
        ``test-seen``: test images of seen counts; ``test-<n>``: test images of held-out count n;
        ``val-<n>``: validation images of held-out count n (report-only curve, never used to choose).
    """
    out: dict[str, ImageSplit] = {}
    for name in ("train", "val"):
        split = task.split(name)
        keep = np.flatnonzero(seen_mask(split.labels, counts, heldout))
        out[name] = SubsetSplit(split, keep, f"{split.identity}/seen-{_tag(heldout)}")
    test = task.split("test")
    keep = np.flatnonzero(seen_mask(test.labels, counts, heldout))
    out["test-seen"] = SubsetSplit(test, keep, f"{test.identity}/seen-{_tag(heldout)}")
    for c in heldout:
        cls = list(counts).index(c)
        for name, split in (("test", test), ("val", task.split("val"))):
            idx = np.flatnonzero(np.asarray(split.labels) == cls)
            if len(idx) == 0:
                raise PaintError(f"task {task.name!r} split {name!r} has no image with {c} objects")
            out[f"{name}-{c}"] = SubsetSplit(split, idx, f"{split.identity}/count{c}")
    return out


def _tag(heldout: Sequence[int]) -> str:
    return "held" + "-".join(str(c) for c in sorted(heldout))


def per_count_accuracy(logits: torch.Tensor, labels: np.ndarray, counts: Sequence[int]) -> dict[int, float]:
    """Accuracy per count (over the classes present in ``labels``)."""
    pred = logits.argmax(dim=1).numpy()
    y = np.asarray(labels)
    return {int(counts[c]): float((pred[y == c] == c).mean()) for c in np.unique(y)}


# --------------------------------------------------------------------------- the workflow


@run_scope
def run_counting(cfg: CountingConfig, resume: bool = False) -> dict[str, Any]:
    """Run the counting study (once, or per seed with ``seeds``); return the summary (``summary.json``)."""
    if cfg.seeds is None:
        return run_counting_once(cfg, resume)
    runs = run_seeds(cfg, resume, "summary.json", run_counting_once)
    return write_seeded_counting(cfg, runs)


def write_seeded_counting(cfg: CountingConfig, runs: dict[int, Any]) -> dict[str, Any]:
    """The parent's ``summary.md`` / ``summary.json``: every figure of the table as mean ± t over seeds."""
    seeds = sorted(runs)
    first = runs[seeds[0]]
    test = interval_leaves([runs[s]["test"] for s in seeds])
    table = counting_table({"heldout": first["heldout"], "test": test}, fmt_fraction, lambda v: fmt_fraction(v, 1.0, 2))
    summary = {
        "model": cfg.model,
        "seeds": seeds,
        "counts": first["counts"],
        "heldout": first["heldout"],
        "alphas": [runs[s]["alpha"] for s in seeds],
        "test": test,
        "per_seed": {str(s): f"seed-{s}/summary.json" for s in seeds},
    }
    out = Path(cfg.output_dir)
    text = (
        f"# Counting over seeds {seeds}: patched on counts {first['seen_counts']}\n\nTest accuracy (%), mean ± the 95% "
        f"Student-t half-width over seeds (each seed: the fine-tuning seed and the validation split).\n\n{table}\n"
    )
    write_text_atomic(out / "summary.md", text)
    write_json_atomic(out / "summary.json", summary)
    return summary | {"table": table}


def run_counting_once(cfg: CountingConfig, resume: bool = False) -> dict[str, Any]:
    """Run the counting study; return the summary (also written to ``summary.json``).

    Steps: split counting into seen and held-out counts; the patch operation (fine-tune the image
    tower on seen counts, zero-shot head over all counts frozen; choose alpha on validation: seen
    counts + support tasks); report test accuracy on seen counts, each held-out count
    (interpolation / extrapolation) and the support tasks at alpha 0, the chosen alpha and 1.
    """
    t0 = time.time()
    out = Path(cfg.output_dir)
    bundle, loaded = load_model_run(cfg, [("patch", [cfg.task]), ("support", cfg.support_tasks)])
    task, supports = loaded[0][1], [t for _, t, _ in loaded[1:]]
    counts = class_counts(task, cfg.counts)
    kinds = heldout_kinds(counts, cfg.heldout)
    splits = counting_splits(task, counts, cfg.heldout)
    open_run(out, cfg, resume)  # every check above ran before any output
    data = prepare_counting(cfg, bundle, task, counts, splits, supports)
    pool = new_pool(bundle, data.pool_tasks, out, cfg.eval_batch_size)
    theta_zs = bundle.image_tower_copy()
    fingerprint = run_fingerprint("counting-v1", cfg, bundle.text_identity, hash_tensors(theta_zs))
    patch_names, support_names = [f"{task.name}/seen"], [st.name for st in supports]
    ft_dir, sel = out / "finetune", cfg.selection
    res = patch_operation(
        pool, theta_zs, patch_names, support_names, cfg.finetune, sel, ft_dir, resume, fingerprint, [data.train]
    )
    alphas = (("zeroshot", 0.0), ("patched", res.choice.alpha), ("finetuned", 1.0))
    test = {label: counting_test_row(pool, res.line.at(a), a, data, counts, cfg.heldout, kinds) for label, a in alphas}
    pool.load(theta_zs)
    summary = outcome_record(cfg.model, bundle.text_identity, res, patch_names, support_names, t0) | {
        "task": task.name,
        "counts": counts,
        "heldout": {str(c): kinds[c] for c in cfg.heldout},
        "seen_counts": [c for c in counts if c not in cfg.heldout],
        "sizes": {
            "train": int(len(data.train.labels)),
            "val_seen": int(len(pool.task(patch_names[0]).labels["val"])),
            "test": int(len(data.y_test)),
        },
        "test": test,
    }
    _write_reports(out, summary)
    return summary


@dataclass
class CountingData:
    """Preprocessed counting data: pool entries for the sweep, the training set, test images and support tests."""

    pool_tasks: list[Any]
    train: Any
    head: torch.Tensor
    x_test: torch.Tensor
    y_test: np.ndarray
    support_test: dict[str, tuple[torch.Tensor, torch.Tensor, np.ndarray]]


def prepare_counting(
    cfg: CountingConfig,
    bundle: Any,
    task: Task,
    counts: list[int],
    splits: dict[str, ImageSplit],
    supports: Sequence[Task],
) -> CountingData:
    """Preprocess (cached) every split the study uses and build the heads."""

    cache = cfg.cache_path / "images"

    def images(split: ImageSplit, cap: int | None) -> tuple[torch.Tensor, np.ndarray]:
        s = capped(split, cap, cfg.seed, 0xC0)
        x = preprocess_split(s, bundle.spec, cache_dir=cache, progress=True, num_workers=cfg.num_workers)
        return torch.as_tensor(x), np.asarray(s.labels)

    head = zeroshot_head(bundle, task.classnames, task.templates, cache_dir=cfg.cache_path)
    x_train, y_train = images(splits["train"], cfg.max_train)
    if np.isin(y_train, [counts.index(c) for c in cfg.heldout]).any():  # the guarantee, checked on the real data
        raise PaintError("internal error: a held-out count reached the fine-tuning set")

    def entry(name: str, role: str, split: ImageSplit, h: torch.Tensor, t: Task) -> PoolTask:
        x, y = images(split, cfg.max_eval)
        return PoolTask(name, role, t.classnames, t.templates, {"val": x}, {"val": y}, {}, h, {})

    pool_tasks = [entry(f"{task.name}/seen", "patch", splits["val"], head, task)]
    pool_tasks += [
        entry(f"{task.name}/{c} (report only)", "heldout", splits[f"val-{c}"], head, task) for c in cfg.heldout
    ]
    support_test = {}
    for st in supports:
        h = zeroshot_head(bundle, st.classnames, st.templates, cache_dir=cfg.cache_path)
        pool_tasks.append(entry(st.name, "support", st.split("val"), h, st))
        support_test[st.name] = (h, *images(st.split("test"), cfg.max_eval))
    x_test, y_test = images(task.split("test"), cfg.max_eval)
    return CountingData(pool_tasks, TrainingSet(task.name, x_train, y_train, head), head, x_test, y_test, support_test)


def counting_test_row(
    pool: Any,
    theta: Any,
    alpha: float,
    data: CountingData,
    counts: list[int],
    heldout: Sequence[int],
    kinds: dict[int, str],
) -> dict[str, Any]:
    """Test accuracy at one image tower: all, seen counts, each count, held-out kinds, support tasks."""

    pool.load(theta)
    bs = pool.batch_size
    logits = predict(pool.model, data.head, data.x_test, pool.spec, bs)
    per_count = per_count_accuracy(logits, data.y_test, counts)
    seen = seen_mask(data.y_test, counts, heldout)
    row = {
        "alpha": alpha,
        "all": metrics_from_logits(logits, data.y_test)["accuracy"],
        "seen": metrics_from_logits(logits[torch.as_tensor(seen)], data.y_test[seen])["accuracy"],
        "per_count": per_count,
        "heldout": {str(c): per_count.get(c, float("nan")) for c in heldout},
    }
    for kind in ("interpolation", "extrapolation"):
        cs = [c for c, k in kinds.items() if k == kind]
        row[kind] = float(np.mean([per_count.get(c, float("nan")) for c in cs])) if cs else None
    row["support"] = {
        name: metrics_from_logits(predict(pool.model, h, xt, pool.spec, bs), yt)["accuracy"]
        for name, (h, xt, yt) in data.support_test.items()
    }
    row["support_mean"] = float(np.mean(list(row["support"].values()))) if row["support"] else None
    return row


# --------------------------------------------------------------------------- reports


def counting_table(
    summary: dict[str, Any],
    pct: Callable[[Any], str] = lambda v: "-" if v is None else f"{100 * v:.1f}",
    alpha: Callable[[Any], str] = lambda v: f"{v:.2g}",
) -> str:
    """Markdown: seen, each held-out count, support mean, per model (test, %).

    ``pct`` and ``alpha`` format a cell: a number here, an interval over seeds in the seeded report.
    """
    held = list(summary["heldout"])
    head = ["model", "alpha", "seen counts"] + [f"{c} ({summary['heldout'][c][:6]}.)" for c in held] + ["support mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in ("zeroshot", "patched", "finetuned"):
        r = summary["test"][label]
        cells = [label, alpha(r["alpha"]), pct(r["seen"]), *(pct(r["heldout"][c]) for c in held)]
        lines.append("| " + " | ".join([*cells, pct(r.get("support_mean"))]) + " |")
    return "\n".join(lines)


def plot_counting(summary: dict[str, Any], path: str | Path) -> Path:
    """Left: test accuracy per count (held-out counts marked); right: validation sweep over alpha."""

    fig, (ax1, ax2) = new_figure(1, 2, figsize=(10, 3.8), dpi=120)
    counts = summary["counts"]
    width = 0.27
    for j, label in enumerate(("zeroshot", "patched", "finetuned")):
        pc = {int(k): v for k, v in summary["test"][label]["per_count"].items()}
        xs = np.arange(len(counts)) + (j - 1) * width
        ax1.bar(
            xs,
            [100 * pc.get(c, np.nan) for c in counts],
            width,
            label=f"{label} (alpha={summary['test'][label]['alpha']:.2g})",
        )
    for i, c in enumerate(counts):
        if str(c) in summary["heldout"]:
            ax1.axvspan(i - 0.45, i + 0.45, color="gold", alpha=0.25, lw=0, zorder=0)
    ax1.set_xticks(range(len(counts)), [str(c) for c in counts])
    ax1.set_xlabel("number of objects (shaded: held out of fine-tuning)")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_ylim(0, 105)
    ax1.legend(fontsize=7)
    alphas = [p["alpha"] for p in summary["sweep"]]
    for name in summary["sweep"][0]["val"]:
        ax2.plot(alphas, [100 * p["val"][name] for p in summary["sweep"]], "-o", markersize=3, label=name)
    ax2.axvline(summary["alpha"], color="k", linestyle=":", alpha=0.5)
    ax2.set_xlabel("alpha")
    ax2.set_ylabel("validation accuracy (%)")
    ax2.legend(fontsize=6)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"Counting: patched on counts {summary['seen_counts']}", fontsize=9)

    return save_figure(fig, path)


def _write_reports(out: Path, summary: dict[str, Any]) -> None:
    plot_counting(summary, out / "counting.png")
    kinds = ", ".join(f"{c} ({k})" for c, k in summary["heldout"].items())
    text = "\n".join(
        [
            f"# Counting: patched on counts {summary['seen_counts']}",
            "",
            f"Model `{summary['model']}`; held out of fine-tuning and of alpha selection: {kinds}. "
            f"Alpha **{summary['alpha']:.3g}** by the `{summary['selection']['rule']}` rule on validation "
            f"(seen counts + support tasks: {', '.join(summary['selection']['support']) or 'none'}).",
            "",
            "## Test accuracy (%)",
            "",
            counting_table(summary),
            "",
            "![counting](counting.png)",
            "",
        ]
    )
    write_text_atomic(out / "summary.md", text)
    write_json_atomic(out / "summary.json", json.loads(json.dumps(summary, default=float)))

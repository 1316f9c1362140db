"""The scale study's report: per-seed figures of every cell, their means and 95% Student-t intervals
per model (:mod:`paint.stats`), the ``scale.md`` tables and the paper's ``scale.png`` figure.

Pure functions of the finished cells (``<model>/seed-<s>/cell.json``): ``paint scale --report``
rewrites them from whatever cells are finished.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from paint.plotting import new_figure, save_figure
from paint.stats import Interval, seed_interval


class StudySettings(Protocol):
    """What the report reads of a :class:`paint.studies.scale.ScaleConfig`."""

    patch_tasks: Sequence[Any]
    support_tasks: Sequence[Any]
    multitask_tasks: Sequence[str]
    selection: Any


def model_label(model: str) -> str:
    """A model's directory and row name: ``paint:tiny`` -> ``paint-tiny``, a path -> its last part."""
    name = model.rstrip("/").split("/")[-1] if "/" in model and not model.startswith("paint:") else model
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def model_labels(models: Sequence[str]) -> dict[str, str]:
    """Each model's directory: its :func:`model_label`, with ``-2``, ``-3`` ... on a repeated one (in list order)."""
    out: dict[str, str] = {}
    for m in models:
        base = label = model_label(m)
        k = 2
        while label in out.values():
            label, k = f"{base}-{k}", k + 1
        out[m] = label
    return out


def per_seed_figures(cell: Mapping[str, Any]) -> dict[str, float]:
    """One cell's headline figures in points, averaged over its patching tasks as the paper does."""
    singles = cell["single"]

    def mean(f) -> float:
        return float(np.mean([f(name, r) for name, r in singles.items()]))

    out = {
        f"{point}_{side}": 100
        * mean(lambda n, r, p=point, sd=side: r["test"][p][n] if sd == "patch" else r["support_mean"][p])
        for point in ("zeroshot", "finetuned", "patched")
        for side in ("support", "patch")
    }
    out["alpha"] = mean(lambda n, r: r["alpha"])
    out["cka_patch"] = mean(lambda n, r: r["cka"]["patch"])
    out["cka_support"] = mean(lambda n, r: r["cka"]["support"])
    out["support_lost_by_finetuning"] = out["zeroshot_support"] - out["finetuned_support"]
    out["support_lost_by_patching"] = out["zeroshot_support"] - out["patched_support"]
    out["patched_below_finetuned"] = out["finetuned_patch"] - out["patched_patch"]
    out["patch_gain"] = out["patched_patch"] - out["zeroshot_patch"]
    return out


def per_task_figures(cell: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per patching task: zero-shot, fine-tuned, patched accuracy (points), alpha, gap, CKA."""
    out = {}
    for name, r in cell["single"].items():
        t = r["test"]
        out[name] = {
            "zeroshot": 100 * t["zeroshot"][name],
            "finetuned": 100 * t["finetuned"][name],
            "patched": 100 * t["patched"][name],
            "alpha": r["alpha"],
            "support_lost_by_finetuning": 100 * (r["support_mean"]["zeroshot"] - r["support_mean"]["finetuned"]),
            "support_lost_by_patching": 100 * (r["support_mean"]["zeroshot"] - r["support_mean"]["patched"]),
            "patched_below_finetuned": 100 * (t["finetuned"][name] - t["patched"][name]),
            "cka_patch": r["cka"]["patch"],
        }
    return out


def multitask_figures(cell: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per mode: patching and support means (points), and the mode's rank by patching mean (1 = best; ties share)."""
    modes = {m: r for m, r in cell["multitask"].items() if m != "zero-shot"}
    return {
        m: {
            "patch_mean": 100 * r["patch_mean"],
            "support_mean": 100 * r["support_mean"],
            "rank": float(1 + sum(o["patch_mean"] > r["patch_mean"] for o in modes.values())),
        }
        for m, r in modes.items()
    }


def intervals(per_seed: Sequence[Mapping[str, float]]) -> dict[str, Interval]:
    """Each figure's mean over seeds with its 95% interval."""
    return {k: seed_interval([f[k] for f in per_seed]) for k in per_seed[0]}


def nested_intervals(per_seed: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, Interval]]:
    return {k: intervals([f[k] for f in per_seed]) for k in per_seed[0]}


def aggregate(cfg: StudySettings, cells: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Per model: parameters, per-seed figures and their intervals (headline, per task, multi-task)."""
    out = {}
    labels = model_labels(list(cells))
    for model, recs in cells.items():
        head = [per_seed_figures(c) for c in recs]
        entry: dict[str, Any] = {
            "label": labels[model],
            "params": recs[0]["params"],
            "seeds": [c["seed"] for c in recs],
            "cell_seconds": [c["seconds"] for c in recs],
            "per_seed": head,
            "summary": intervals(head),
            "per_task": nested_intervals([per_task_figures(c) for c in recs]),
        }
        if cfg.multitask_tasks:
            entry["multitask"] = nested_intervals([multitask_figures(c) for c in recs])
        out[model] = entry
    return out


def _iv(iv: Interval, digits: int = 1) -> str:
    if iv.n < 2:
        return f"{iv.mean:.{digits}f}"
    return f"{iv.mean:.{digits}f} ± {iv.half:.{digits}f}"


def scale_markdown(cfg: StudySettings, agg: Mapping[str, Any], missing: Sequence[tuple[str, int]] = ()) -> str:
    """``scale.md``: the headline table, per-task table and multi-task table (mean ± 95% interval)."""
    lines = [
        "# Scale study: PAINT on a ladder of model sizes",
        "",
        f"Patching tasks {', '.join(t.name for t in cfg.patch_tasks)}; support tasks "
        f"{', '.join(t.name for t in cfg.support_tasks)}; selection `{cfg.selection.strategy}` on "
        f"`{cfg.selection.rule_name}` (epsilon {cfg.selection.epsilon:g}). Test accuracy (%), averaged over the "
        "patching tasks, as mean ± the 95% Student-t interval over seeds (no interval with one seed).",
        "",
        "| model | params (image tower) | seeds | zero-shot support / patch | fine-tuned support / patch "
        "| patched support / patch | support lost by fine-tuning | patched below fine-tuned | alpha "
        "| CKA zs-ft (patch / support images) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, e in agg.items():
        s = e["summary"]
        lines.append(
            f"| `{model}` | {e['params']['total'] / 1e6:.2f}M ({e['params']['image_tower'] / 1e6:.2f}M) "
            f"| {len(e['seeds'])} "
            f"| {_iv(s['zeroshot_support'])} / {_iv(s['zeroshot_patch'])} "
            f"| {_iv(s['finetuned_support'])} / {_iv(s['finetuned_patch'])} "
            f"| {_iv(s['patched_support'])} / {_iv(s['patched_patch'])} "
            f"| {_iv(s['support_lost_by_finetuning'])} | {_iv(s['patched_below_finetuned'])} "
            f"| {_iv(s['alpha'], 2)} | {_iv(s['cka_patch'], 3)} / {_iv(s['cka_support'], 3)} |"
        )
    lines += [
        "",
        "## Per patching task",
        "",
        "| model | task | zero-shot | fine-tuned | patched | alpha | support lost (ft / patched) | CKA zs-ft |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, e in agg.items():
        for task, s in e["per_task"].items():
            lines.append(
                f"| `{model}` | {task} | {_iv(s['zeroshot'])} | {_iv(s['finetuned'])} | {_iv(s['patched'])} "
                f"| {_iv(s['alpha'], 2)} | {_iv(s['support_lost_by_finetuning'])} / {_iv(s['support_lost_by_patching'])} "
                f"| {_iv(s['cka_patch'], 3)} |"
            )
    if cfg.multitask_tasks:
        modes = list(next(iter(agg.values()))["multitask"])
        lines += [
            "",
            f"## Multi-task patching of {', '.join(cfg.multitask_tasks)}",
            "",
            "Patching mean / support mean (test %), and the mean rank of the mode by patching mean (1 = best).",
            "",
            "| model | " + " | ".join(modes) + " |",
            "|---|" + "---|" * len(modes),
        ]
        for model, e in agg.items():
            mt = e["multitask"]
            cells = [
                f"{_iv(mt[m]['patch_mean'])} / {_iv(mt[m]['support_mean'])} (rank {mt[m]['rank'].mean:.1f})"
                for m in modes
            ]
            lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
    if missing:
        lines += [
            "",
            "Not run yet (report of the finished cells only): "
            + ", ".join(f"`{m}` seed {s}" for m, s in missing)
            + ".",
        ]
    compute = ", ".join(f"`{m}` {sum(e['cell_seconds']) / 60:.0f}" for m, e in agg.items())
    lines += ["", f"Minutes the cells took, per model (all seeds): {compute}.", "", "![scale](scale.png)", ""]
    return "\n".join(lines)


def plot_scale(agg: Mapping[str, Any], path: str | Path) -> Path:
    """The paper's figure: per model, zero-shot -> patched -> fine-tuned in the (support, patching) plane.

    Each point is the mean over seeds, its bars the 95% interval over seeds on both axes.
    """

    fig, ax = new_figure(figsize=(6.4, 4.8), dpi=120)
    colours = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377"]
    markers = {"zeroshot": "o", "patched": "*", "finetuned": "s"}
    for i, (model, e) in enumerate(agg.items()):
        s, c = e["summary"], colours[i % len(colours)]
        xs, ys = [], []
        for point in ("zeroshot", "patched", "finetuned"):
            x, y = s[f"{point}_support"], s[f"{point}_patch"]
            xerr = None if x.n < 2 else x.half
            yerr = None if y.n < 2 else y.half
            ax.errorbar(
                x.mean, y.mean, xerr=xerr, yerr=yerr, fmt=markers[point], color=c, ms=11 if point == "patched" else 7,
                capsize=3, label=f"{model} ({e['params']['total'] / 1e6:.2f}M)" if point == "zeroshot" else None,
            )  # fmt: skip
            xs.append(x.mean)
            ys.append(y.mean)
        ax.plot(xs, ys, "-", color=c, alpha=0.5)
    ax.set_xlabel("support tasks, mean test accuracy (%)")
    ax.set_ylabel("patching tasks, mean test accuracy (%)")
    ax.set_title(
        "PAINT across model scale: o zero-shot, * patched, s fine-tuned (95% intervals over seeds)", fontsize=8
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)


def to_json(obj: Any) -> Any:
    """Intervals as records, recursively."""
    if isinstance(obj, Interval):
        return obj.record()
    if isinstance(obj, Mapping):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    return obj

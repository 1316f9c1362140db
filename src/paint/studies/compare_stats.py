"""The reports of a recipe comparison repeated over seeds.

The statistics are :mod:`paint.stats`'s and the tables :mod:`paint.pipeline.seeds`'s, as in every
seeded command; this module adds what only a recipe comparison has: the best patching accuracy
on each test frontier within the support bound, the fine-tuning cost, and the frontier plot
averaged over seeds with error bars.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paint.pipeline.seeds import fmt_interval, method_summary, methods_markdown, summarise_methods
from paint.plotting import new_figure, save_figure
from paint.stats import seed_interval
from paint.utils import write_json_atomic, write_text_atomic

Run = Mapping[str, Any]  # one seed's comparison.json


def recipe_rows(run: Run) -> list[dict[str, Any]]:
    """One seed's recipes as the seeded tables read them (the alpha under ``alphas``)."""
    return [{**r, "alphas": r["alpha"]} for r in run["recipes"]]


def zeroshot_row(run: Run) -> dict[str, Any]:
    return {
        "label": "zero-shot",
        "alphas": 0.0,
        "test": run["zeroshot_test"],
        "test_correct": run["zeroshot_test_correct"],
        "test_n": run["test_n"],
    }


def seeded_summary(cfg: Any, runs: Mapping[int, Run], seconds: float) -> dict[str, Any]:
    """The whole comparison over seeds (``comparison.json`` of the parent directory)."""
    seeds = sorted(runs)
    first = runs[seeds[0]]
    patch, support = list(first["patch_tasks"]), list(first["support_tasks"])
    labels = [r.name for r in cfg.recipes]
    recipes = summarise_methods({s: recipe_rows(runs[s]) for s in seeds}, labels, cfg.reference_label, patch, support)
    for rec in recipes:
        rows = [next(r for r in runs[s]["recipes"] if r["label"] == rec["label"]) for s in seeds]
        best = [r["best_within_epsilon"] for r in rows]
        rec["best_within_epsilon"] = (
            seed_interval([100 * b["patch_mean"] for b in best]).record() if all(b is not None for b in best) else None
        )
        rec["finetune_seconds"] = float(np.mean([r["finetune_seconds"] for r in rows]))
        rec["trainable_params"] = rows[0]["trainable_params"]
    return {
        "model": cfg.model,
        "seeds": seeds,
        "patch_tasks": patch,
        "support_tasks": support,
        "selection": cfg.selection.model_dump(mode="json"),
        "reference": cfg.reference_label,
        "zeroshot": method_summary([zeroshot_row(first)], None, patch, support),
        "recipes": recipes,
        "per_seed": {str(s): f"seed-{s}/comparison.json" for s in seeds},
        "timing_s": {"total": round(seconds, 2)},
    }


def seeded_markdown(summary: Mapping[str, Any]) -> str:
    eps = summary["selection"]["epsilon"]
    recipes = summary["recipes"]
    extra = {
        f"best patch (support within {eps:g} pt)": [fmt_interval(r["best_within_epsilon"]) for r in recipes],
        "fine-tune s": [f"{r['finetune_seconds']:.0f}" for r in recipes],
    }
    return methods_markdown(
        recipes,
        summary["reference"],
        eps,
        summary["patch_tasks"],
        summary["support_tasks"],
        zeroshot=summary["zeroshot"],
        extra=extra,
    )


def mean_frontier(runs: Sequence[Run], label: str) -> list[dict[str, float]]:
    """The test frontier averaged over seeds at each alpha every seed measured, with t half-widths."""
    per_alpha: dict[float, list[tuple[float, float]]] = {}
    for run in runs:
        row = next(r for r in run["recipes"] if r["label"] == label)
        for p in row["frontier"]:
            per_alpha.setdefault(float(p["alpha"]), []).append((100 * p["support_mean"], 100 * p["patch_mean"]))
    out = []
    for a, pts in sorted(per_alpha.items()):
        if len(pts) != len(runs):
            continue  # a chosen alpha off the grid, measured in some seeds only
        s, p = seed_interval([x for x, _ in pts]), seed_interval([y for _, y in pts])
        out.append({"alpha": a, "support": s.mean, "patch": p.mean, "support_half": s.half, "patch_half": p.half})
    return out


def plot_seeded_frontier(runs: Sequence[Run], summary: Mapping[str, Any], path: str | Path) -> Path:
    """Each recipe's mean test curve with error bars over seeds; its chosen points' mean starred."""

    def half(v: float) -> float:
        return 0.0 if math.isnan(v) else v

    fig, ax = new_figure(figsize=(6.4, 4.8), dpi=120)
    for r in summary["recipes"]:
        pts = mean_frontier(runs, r["label"])
        xs, ys = [p["support"] for p in pts], [p["patch"] for p in pts]
        (ln,) = ax.plot(xs, ys, "o-", ms=3, label=r["label"])
        xerr, yerr = [half(p["support_half"]) for p in pts], [half(p["patch_half"]) for p in pts]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=ln.get_color(), alpha=0.5, lw=1)
        ax.plot(r["support"]["seeds"]["mean"], r["patch"]["seeds"]["mean"], "*", ms=14, color=ln.get_color(), mec="k")
    z = summary["zeroshot"]
    eps = summary["selection"]["epsilon"]
    ax.plot(z["support"]["seeds"]["mean"], z["patch"]["seeds"]["mean"], "X", ms=10, color="black", label="zero-shot")
    ax.axvline(z["support"]["seeds"]["mean"] - eps, color="grey", ls=":", lw=1, label=f"support -{eps:g} pt")
    ax.set_xlabel("support tasks, mean test accuracy (%)")
    ax.set_ylabel("patching task(s), mean test accuracy (%)")
    ax.set_title(
        f"Patch vs forgetting by recipe, mean of {len(runs)} seed(s), bars: 95% t over seeds (star: chosen alpha)",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def write_seeded_reports(cfg: Any, runs: Mapping[int, Run], seconds: float) -> dict[str, Any]:
    """``comparison.md``, ``frontier.png`` and ``comparison.json`` (last: it marks a finished run) of the parent."""
    out = Path(cfg.output_dir)
    summary = seeded_summary(cfg, runs, seconds)
    plot_seeded_frontier([runs[s] for s in sorted(runs)], summary, out / "frontier.png")
    table = seeded_markdown(summary)
    title = f"# Fine-tuning recipes over seeds {summary['seeds']}: patching {', '.join(summary['patch_tasks'])}"
    write_text_atomic(out / "comparison.md", f"{title}\n\n{table}\n\n![frontier](frontier.png)\n")
    write_json_atomic(out / "comparison.json", summary)
    summary["table"] = table
    summary["skipped_on_resume"] = []
    return summary

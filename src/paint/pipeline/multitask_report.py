"""``paint multitask``'s reports: the comparison of the modes in one run, and over seeds.

:func:`comparison_rows` measures every mode's final weights (and theta_zs) on the test splits;
:func:`comparison_markdown` is one run's table; :func:`write_seeded_multitask` writes the parent's
``comparison.md`` / ``comparison.json`` of a seeded run (intervals and paired differences from
:mod:`paint.pipeline.seeds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paint.pipeline.seeds import bound_on_test, method_summary, methods_markdown, summarise_methods, test_record
from paint.utils import write_json_atomic, write_text_atomic


def comparison_rows(ctx: Any, results: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per mode (and zero-shot): test accuracy per task, group means, costs.

    ``ctx`` is a :class:`paint.pipeline.multitask.MultitaskRun`, ``results`` its modes' :class:`~paint.pipeline.multitask.ModeResult`.
    """
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


def write_seeded_multitask(cfg: Any, runs: dict[int, Any], seconds: float) -> dict[str, Any]:
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

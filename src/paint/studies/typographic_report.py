"""The typographic study's reports: the test table (clean / attacked accuracy and attack success at
zero-shot, patched and fine-tuned), the held-out lettering styles' table, the validation sweep plot and
``summary.md``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paint.plotting import new_figure, save_figure
from paint.utils import write_json_atomic, write_text_atomic


def typographic_table(
    test: dict[str, dict[str, Any]],
    pct: Callable[[Any], str] = lambda v: f"{100 * v:.1f}",
    alpha: Callable[[Any], str] = lambda v: f"{v:.2g}",
) -> str:
    """Markdown: per task and model, clean accuracy, attacked accuracy, ASR (test, %).

    ``pct`` and ``alpha`` format a cell: a number here, an interval over seeds in the seeded report.
    """
    lines = [
        "| task | role | model | alpha | clean acc | attacked acc | attack success rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in test.items():
        for label in ("zeroshot", "patched", "finetuned"):
            m = r[label]
            cells = [pct(m[k]) for k in ("clean_accuracy", "attacked_accuracy", "attack_success_rate")]
            lines.append(f"| {name} | {r['role']} | {label} | {alpha(m['alpha'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def styles_table(test: dict[str, dict[str, Any]]) -> str:
    """Markdown: attacked accuracy / ASR (test, %) per task, model and held-out lettering style."""
    names = [n for r in test.values() for n in r["zeroshot"].get("styles", {})]
    names = list(dict.fromkeys(names))
    if not names:
        return ""
    lines = ["| task | model | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for task, r in test.items():
        if "styles" not in r["zeroshot"]:
            continue
        for label in ("zeroshot", "patched", "finetuned"):
            cells = [
                f"{100 * m['attacked_accuracy']:.1f} / {100 * m['attack_success_rate']:.0f}"
                for m in (r[label]["styles"][n] for n in names)
            ]
            lines.append(f"| {task} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_typographic_sweep(
    sweep: list[dict[str, Any]], path: str | Path, chosen: float | None = None, patch_task: str | None = None
) -> Path:
    """Validation accuracy against alpha: solid = clean, dashed = attacked, one colour per task."""

    alphas = [pt["alpha"] for pt in sweep]
    tasks = sorted({n.rsplit("/", 1)[0] for n in sweep[0]["val"]})
    fig, ax = new_figure(figsize=(6, 4.2), dpi=120)
    for i, t in enumerate(tasks):
        colour = f"C{i}"
        for kind, ls in (("clean", "-"), ("attacked", "--")):
            key = f"{t}/{kind}"
            if key in sweep[0]["val"]:
                role = " [patched]" if t == patch_task else ""
                ax.plot(
                    alphas,
                    [100 * pt["val"][key] for pt in sweep],
                    ls,
                    marker="o",
                    markersize=3,
                    color=colour,
                    label=f"{t}{role} ({kind})",
                )
    if chosen is not None:
        ax.axvline(chosen, color="k", alpha=0.4, linestyle=":", label=f"chosen alpha={chosen:.2g}")
    ax.set_xlabel("alpha")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Typographic attack: clean (solid) vs attacked (dashed)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")

    return save_figure(fig, path)


def write_typographic_reports(out: Path, summary: dict[str, Any]) -> None:

    plot_typographic_sweep(summary["sweep"], out / "sweep.png", summary["alpha"], summary["patch_task"])
    text = "\n".join(
        [
            f"# Typographic attack: patched on {summary['patch_task']}",
            "",
            f"Model `{summary['model']}`; alpha **{summary['alpha']:.3g}** by the `{summary['selection']['rule']}` rule "
            f"(patching objective: {', '.join(summary['selection']['patching'])}; support: {', '.join(summary['selection']['support'])}). "
            f"Held out (never trained on; their attacked images never used to choose alpha): "
            f"{', '.join(summary['transfer_tasks']) or 'none'}.",
            "",
            "## Test (%)",
            "",
            typographic_table(summary["test"]),
            "",
            f"Attack success rate: {summary['asr_definition']}.",
            "",
            *(
                [
                    "## Lettering styles never trained on (test; attacked accuracy % / attack success rate %)",
                    "",
                    styles_table(summary["test"]),
                    "",
                    "Styles: "
                    + "; ".join(f"`{n}`: {json.dumps(st)}" for n, st in summary.get("test_styles", {}).items())
                    + ".",
                    "",
                ]
                if styles_table(summary["test"])
                else []
            ),
            "![sweep](sweep.png)",
            "",
        ]
    )
    write_text_atomic(out / "summary.md", text)
    write_json_atomic(out / "summary.json", json.loads(json.dumps(summary, default=float)))

"""Reports: Markdown tables, the trade-off curve plot, the model card."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from paint.plotting import new_figure, save_figure
from paint.utils import write_text_atomic


def points(epsilon: float) -> str:
    """``1 point``, ``0.5 points``: an accuracy tolerance in words."""
    return f"{epsilon:g} point" + ("" if epsilon == 1 else "s")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def test_table(test: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table: task, role, zero-shot, fine-tuned, patched, delta (points)."""
    lines = ["| task | role | zero-shot | fine-tuned | patched | patched - zero-shot |", "|---|---|---|---|---|---|"]
    for task, r in test.items():
        delta = 100 * (r["patched"] - r["zeroshot"])
        lines.append(
            f"| {task} | {r['role']} | {pct(r['zeroshot'])} | {pct(r['finetuned'])} | {pct(r['patched'])} | {delta:+.1f} |"
        )
    return "\n".join(lines)


def sweep_table(sweep: Sequence[Mapping[str, Any]], tasks: Sequence[str], chosen: float | None = None) -> str:
    """Markdown table of validation accuracy per alpha."""
    lines = ["| alpha | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for p in sweep:
        mark = " **(chosen)**" if chosen is not None and abs(float(p["alpha"]) - chosen) < 1e-12 else ""
        lines.append(f"| {float(p['alpha']):.2f}{mark} | " + " | ".join(pct(p["val"][t]) for t in tasks) + " |")
    return "\n".join(lines)


def plot_tradeoff(
    sweep: Sequence[Mapping[str, Any]],
    patch: Sequence[str],
    support: Sequence[str],
    path: str | Path,
    chosen: float | None = None,
    title: str = "PAINT: accuracy trade-off over alpha (validation)",
) -> Path:
    """The paper's figure: patching accuracy against mean support accuracy, one point per alpha."""

    xs = [100 * sum(p["val"][t] for t in support) / max(1, len(support)) for p in sweep]
    ys = [100 * sum(p["val"][t] for t in patch) / len(patch) for p in sweep]
    fig, ax = new_figure(figsize=(5.5, 4.5), dpi=120)
    ax.plot(xs, ys, "-o", color="tab:blue", markersize=4, label="theta_alpha")
    for p, x, y in zip(sweep, xs, ys):
        ax.annotate(f"{float(p['alpha']):.2g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ends = {0.0: ("tab:gray", "zero-shot"), 1.0: ("tab:red", "fine-tuned")}
    for p, x, y in zip(sweep, xs, ys):
        a = float(p["alpha"])
        if a in ends:
            ax.plot([x], [y], "s", color=ends[a][0], markersize=8, label=ends[a][1])
        if chosen is not None and abs(a - chosen) < 1e-12:
            ax.plot([x], [y], "*", color="tab:green", markersize=15, label=f"chosen alpha={a:.2g}")
    ax.set_xlabel(
        f"mean support accuracy (%)\n{textwrap.fill(', '.join(support) or 'no support task', 70)}", fontsize=8
    )
    ax.set_ylabel(f"patching accuracy (%): {textwrap.shorten(', '.join(patch), 50)}", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")

    return save_figure(fig, path)


def model_card(summary: Mapping[str, Any], config_yaml: str) -> str:
    """A Hugging Face model card (README.md) for the patched checkpoint."""
    patch = [t for t, r in summary["test"].items() if r["role"] == "patch"]
    family = summary.get("model_family", "clip")
    title = {"clip": "CLIP", "siglip": "SigLIP"}.get(family, family)
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            "pipeline_tag: zero-shot-image-classification",
            f"tags: [{family}, paint, patching, weight-interpolation]",
            "---",
            "",
            f"# Patched {title}: {', '.join(patch)}",
            "",
            "Made with paint, a library for PAINT (Ilharco et al., *Patching open-vocabulary models by "
            "interpolating weights*, NeurIPS 2022, [arXiv:2208.05592](https://arxiv.org/abs/2208.05592)): "
            "the image tower was fine-tuned on the patching "
            "task(s) with the zero-shot text head frozen, then interpolated with the zero-shot weights, "
            f"`theta = (1 - alpha) * theta_zs + alpha * theta_ft`, alpha = **{summary['alpha']:.3g}** "
            f"(rule: {summary['selection']['rule']}, chosen on validation splits).",
            "",
            f"Base model: `{summary['model']}`.",
            "",
            "## Test accuracy (%)",
            "",
            test_table(summary["test"]),
            "",
            "## Config",
            "",
            "```yaml",
            config_yaml.rstrip(),
            "```",
            "",
        ]
    )


def write_markdown(path: str | Path, text: str) -> None:
    write_text_atomic(path, text if text.endswith("\n") else text + "\n")

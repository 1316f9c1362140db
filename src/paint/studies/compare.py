"""``paint compare``: fine-tuning recipes side by side on the patch-versus-forgetting frontier.

One set of patching and support tasks, one selection, a list of recipes (each a
``finetune.recipe`` with its own settings on top of the shared ``finetune``). Each recipe is
fine-tuned from theta_zs, its alpha chosen on validation exactly as ``paint patch`` does, and its
whole line evaluated on the test splits at ``frontier_alphas``: the curve in the plane (support
accuracy, patching accuracy) that says how much of the patch costs how much forgetting.

Written: ``recipes/<label>/result.json`` when a recipe is finished (a resumed comparison skips
it; an unfinished one continues from its epoch checkpoint), then ``frontier.png``,
``comparison.md`` and ``comparison.json`` (last: it marks a finished run).
"""

from __future__ import annotations

import json
import re
import resource
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from paint.config import StrictModel, alpha_grid, first_duplicate
from paint.data.spec import TaskSpec
from paint.pipeline.operation import choose, finetune_tower, start_state
from paint.pipeline.pool import Line, start_pool
from paint.pipeline.run import ModelRunConfig, check_output_dir, check_recipe_fits_selection, run_fingerprint
from paint.pipeline.rundir import run_scope
from paint.pipeline.seeds import SeedsSetting, bound_on_test, run_seeds, test_record
from paint.plotting import new_figure, save_figure
from paint.progress import progress
from paint.studies.compare_stats import write_seeded_reports
from paint.train.finetune import FinetuneConfig
from paint.train.recipes.config import RecipeSpec
from paint.utils import hash_tensors, write_json_atomic, write_text_atomic

RESULT = "result.json"
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class CompareRecipe(StrictModel):
    """One recipe of a comparison: ``lora``, or ``{recipe: {name: lora, rank: 4}, finetune: {lr: 1e-3}, label: ...}``."""

    label: str | None = Field(None, description="row name and directory (default: the recipe's name)")
    recipe: RecipeSpec
    finetune: dict[str, Any] = Field(default_factory=dict, description="overrides of the shared finetune settings")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"recipe": {"name": data}}
        if isinstance(data, dict) and isinstance(data.get("recipe"), str):
            return {**data, "recipe": {"name": data["recipe"]}}
        return data

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None and not LABEL.match(v):
            raise ValueError(f"label {v!r} must be letters, digits, '.', '_' or '-' (it names a directory)")
        return v

    @field_validator("finetune")
    @classmethod
    def _no_recipe(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "recipe" in v:
            raise ValueError("set the recipe with 'recipe:', not inside 'finetune:'")
        return v

    @property
    def name(self) -> str:
        return self.label or self.recipe.name


class CompareConfig(ModelRunConfig, SeedsSetting):
    """``paint compare``: the tasks, the shared fine-tuning settings and the recipes to compare."""

    patch_tasks: list[TaskSpec] = Field(min_length=1, description="fine-tuned on jointly; one alpha")
    support_tasks: list[TaskSpec] = Field(min_length=1, description="the forgetting side of the frontier")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="shared by every recipe")
    recipes: list[CompareRecipe] = Field(min_length=1)
    frontier_alphas: list[float] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(11)], description="test-split points of each curve"
    )
    reference: str | None = Field(
        None, description="the recipe every paired difference is taken against (default: the first)"
    )

    @field_validator("frontier_alphas")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        return alpha_grid(v)

    @model_validator(mode="after")
    def _checks(self):
        dup = first_duplicate([t.name for t in self.patch_tasks + self.support_tasks])
        if dup:
            raise ValueError(f"task {dup!r} is listed twice")
        dup = first_duplicate([r.name for r in self.recipes])
        if dup:
            raise ValueError(f"recipe {dup!r} is listed twice; give one of them a label")
        for r in self.recipes:  # an override that does not validate is a config error, before any work
            check_recipe_fits_selection(self.recipe_config(r), self.selection, f"{r.name}: ")
        if self.reference is not None and self.reference not in [r.name for r in self.recipes]:
            raise ValueError(f"reference {self.reference!r} is not one of the recipes' labels")
        return self

    @property
    def reference_label(self) -> str:
        return self.reference or self.recipes[0].name

    def recipe_config(self, entry: CompareRecipe) -> FinetuneConfig:
        """The shared settings with the entry's overrides and recipe."""
        data = {**self.finetune.model_dump(), **entry.finetune, "recipe": entry.recipe.model_dump()}
        try:
            return FinetuneConfig.model_validate(data)
        except Exception as e:
            raise ValueError(f"recipe {entry.name!r}: {str(e).splitlines()[-1].strip()}") from None


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every ``interval`` seconds.

    With psutil (an Accelerate dependency) the samples start at the block; without it,
    ``resource.getrusage`` gives the process's lifetime peak (an upper bound for the block).
    """

    def __init__(self, interval: float = 0.05):
        self.interval, self.start_mb, self.peak_mb = interval, 0.0, 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _now_mb() -> float | None:
        try:
            import psutil

            return psutil.Process().memory_info().rss / 2**20
        except ImportError:
            return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = self._now_mb()
            if now is not None:
                self.peak_mb = max(self.peak_mb, now)

    def __enter__(self) -> PeakRSS:
        now = self._now_mb()
        self.start_mb = self.peak_mb = now or 0.0
        if now is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            now = self._now_mb()
            self.peak_mb = max(self.peak_mb, now or 0.0)
        else:
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def group_means(acc: dict[str, float], patch: Sequence[str], support: Sequence[str]) -> tuple[float, float]:
    """(mean patching accuracy, mean support accuracy)."""
    return float(np.mean([acc[n] for n in patch])), float(np.mean([acc[n] for n in support]))


def best_within(frontier: Sequence[dict[str, Any]], support_floor: float) -> dict[str, Any] | None:
    """The frontier point of highest patching accuracy whose support mean is at least ``support_floor``."""
    ok = [p for p in frontier if p["support_mean"] >= support_floor - 1e-12]
    return max(ok, key=lambda p: (p["patch_mean"], -p["alpha"])) if ok else None


def run_recipe_entry(
    cfg: CompareConfig,
    entry: CompareRecipe,
    pool: Any,
    theta_zs: Any,
    base_fp: str,
    out: Path,
    resume: bool,
) -> dict[str, Any]:
    """Fine-tune with one recipe, choose alpha on validation, evaluate its test frontier; return its record."""

    names_p, names_s = pool.names("patch"), pool.names("support")
    rcfg = cfg.recipe_config(entry)
    rdir = out / "recipes" / entry.name
    fp = run_fingerprint(None, None, base_fp, rcfg.model_dump_json())
    t0 = time.time()
    theta_zs = start_state(pool, theta_zs, rcfg)  # + the text tower (flyp) or the patching heads (lp-ft)
    with PeakRSS() as mem:
        theta_ft, fit = finetune_tower(pool, theta_zs, names_p, rcfg, rdir / "finetune", resume, fp)
    seconds = time.time() - t0
    line = Line.between(theta_zs, theta_ft, f"{entry.name}/")
    choice = choose(pool, line, cfg.selection, names_p, names_s)

    frontier = []
    for a in progress(sorted({*cfg.frontier_alphas, choice.alpha}), desc=f"test frontier ({entry.name})"):
        test = pool.evaluate_line(line, a, "test")
        acc = {n: m["accuracy"] for n, m in test.items()}
        pm, sm = group_means(acc, names_p, names_s)
        frontier.append({"alpha": a, "test": acc, "patch_mean": pm, "support_mean": sm})
    chosen = next(p for p in frontier if p["alpha"] == choice.alpha)
    zero = next(p for p in frontier if p["alpha"] == 0.0)
    best = best_within(frontier, zero["support_mean"] - cfg.selection.epsilon / 100)
    chosen_test = pool.evaluate_line(line, choice.alpha, "test")  # cached: its per-image correctness
    return {
        "label": entry.name,
        "recipe": rcfg.recipe.model_dump(mode="json"),
        "finetune": rcfg.model_dump(mode="json"),
        "alpha": choice.alpha,
        "selection": choice.record(),
        "test": chosen["test"],
        "patch_mean": chosen["patch_mean"],
        "support_mean": chosen["support_mean"],
        "best_within_epsilon": best,
        "bound_on_test": bound_on_test(
            chosen["test"], zero["test"], names_s, cfg.selection.epsilon, cfg.selection.constraint
        ),
        "test_correct": test_record(chosen_test)["test_correct"],
        "test_n": test_record(chosen_test)["test_n"],
        "frontier": frontier,
        "sweep": choice.sweep,
        "finetune_seconds": round(seconds, 2),
        "trainable_params": fit.trainable_params,
        "peak_rss_mb": round(mem.peak_mb, 1),
        "rss_increase_mb": round(mem.peak_mb - mem.start_mb, 1),
        "steps": fit.steps,
        "resumed_from_epoch": fit.resumed_from_epoch,
        "recipe_info": fit.info,
        "runtime": fit.runtime,
        "final_loss": fit.history[-1]["loss"] if fit.history else None,
    }


def comparison_markdown(
    rows: Sequence[dict[str, Any]], zeroshot: dict[str, float], patch: Sequence[str], support: Sequence[str], eps: float
) -> str:
    """One row per recipe (and zero-shot): chosen alpha, test accuracy (%), best patch within epsilon, costs."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    head = ["recipe", "alpha", *patch, *support, "support mean", f"best patch (support within {eps:g} pt)"]
    head += ["fine-tune s", "trainable params", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    zp, zs_ = group_means(zeroshot, patch, support)
    zero_cells = ["zero-shot", "0", *(pct(zeroshot[n]) for n in patch), *(pct(zeroshot[n]) for n in support)]
    lines.append("| " + " | ".join(zero_cells + [pct(zs_), pct(zp), "-", "-", "-"]) + " |")
    for r in rows:
        best = r["best_within_epsilon"]
        best_cell = "-" if best is None else f"{pct(best['patch_mean'])} (alpha {best['alpha']:.3g})"
        cells = [r["label"], f"{r['alpha']:.3g}", *(pct(r["test"][n]) for n in patch)]
        cells += [pct(r["test"][n]) for n in support]
        cells += [pct(r["support_mean"]), best_cell, f"{r['finetune_seconds']:.0f}", f"{r['trainable_params']:,}"]
        cells.append(f"{r['peak_rss_mb']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_frontier(
    rows: Sequence[dict[str, Any]], zeroshot: tuple[float, float], eps: float, path: str | Path, title: str = ""
) -> Path:
    """Each recipe's test curve in the (support mean, patching mean) plane; zero-shot and chosen points marked."""

    fig, ax = new_figure(figsize=(6.4, 4.8), dpi=120)
    zp, zs_ = zeroshot
    for r in rows:
        pts = sorted(r["frontier"], key=lambda p: p["alpha"])
        (ln,) = ax.plot(
            [100 * p["support_mean"] for p in pts], [100 * p["patch_mean"] for p in pts], "o-", ms=3, label=r["label"]
        )
        ax.plot(100 * r["support_mean"], 100 * r["patch_mean"], "*", ms=14, color=ln.get_color(), mec="black")
    ax.plot(100 * zs_, 100 * zp, "X", ms=10, color="black", label="zero-shot")
    ax.axvline(100 * zs_ - eps, color="grey", ls=":", lw=1, label=f"support -{eps:g} pt")
    ax.set_xlabel("support tasks, mean test accuracy (%)")
    ax.set_ylabel("patching task(s), mean test accuracy (%)")
    ax.set_title(title or "Patch vs forgetting by fine-tuning recipe (star: chosen alpha)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


@run_scope
def run_compare(cfg: CompareConfig, resume: bool = False) -> dict[str, Any]:
    """Run every recipe (skipping finished ones on resume); write the table, the JSON and the frontier plot.

    With ``seeds``, the whole comparison runs once per seed (a finished seed is kept on resume; seeds
    may be added) and the reports give each figure's mean, its interval over seeds, the test split's
    sampling error and the paired differences against the reference recipe (:mod:`paint.studies.compare_stats`).
    """
    if cfg.seeds is None:
        return run_one_seed(cfg, resume)

    t0 = time.time()
    runs = run_seeds(cfg, resume, MARKER, run_one_seed)
    return write_seeded_reports(cfg, runs, time.time() - t0)


MARKER = "comparison.json"


def run_one_seed(cfg: CompareConfig, resume: bool = False) -> dict[str, Any]:
    """One comparison run in ``cfg.output_dir`` (every recipe with ``finetune.seed``)."""

    t0 = time.time()
    out = Path(cfg.output_dir)
    marker = MARKER
    check_output_dir(out, resume, marker)
    pool, bundle = start_pool(cfg, out, resume, cfg.patch_tasks, cfg.support_tasks, marker)
    names_p, names_s = pool.names("patch"), pool.names("support")
    theta_zs = bundle.image_tower_copy()
    text_zs = {k: v.detach().clone() for k, v in bundle.model.state_dict().items() if k not in theta_zs}
    train_ids = (f"{t.name}:{t.identities.get('train', '')}" for t in pool.tasks)
    base_fp = run_fingerprint(None, None, bundle.text_identity, hash_tensors(theta_zs), *train_ids)
    zs_test = pool.evaluate_state(theta_zs, "test")
    zs = {n: m["accuracy"] for n, m in zs_test.items()}
    rows, skipped = [], []
    for entry in cfg.recipes:
        done = out / "recipes" / entry.name / RESULT
        if resume and done.is_file():
            rows.append(json.loads(done.read_text()))
            skipped.append(entry.name)
            continue
        row = run_recipe_entry(cfg, entry, pool, theta_zs, base_fp, out, resume)
        pool.model.load_state_dict(text_zs, strict=False)  # a flyp line leaves its last text tower in the model
        write_json_atomic(done, row)
        rows.append(row)
    eps = cfg.selection.epsilon
    zp, zsup = group_means(zs, names_p, names_s)
    plot_frontier(rows, (zp, zsup), eps, out / "frontier.png")
    table = comparison_markdown(rows, zs, names_p, names_s, eps)
    summary = {
        "model": cfg.model,
        "patch_tasks": names_p,
        "support_tasks": names_s,
        "selection": cfg.selection.model_dump(mode="json"),
        "seed": cfg.finetune.seed,
        "zeroshot_test": zs,
        "zeroshot_test_correct": {n: m["correct"] for n, m in zs_test.items()},
        "test_n": {n: m["n"] for n, m in zs_test.items()},
        "recipes": rows,
        "skipped_on_resume": skipped,
        "timing_s": {"total": round(time.time() - t0, 2)},
    }
    header = (
        f"# Fine-tuning recipes: patching {', '.join(names_p)}\n\nTest accuracy (%) at the alpha each recipe's line "
        f"gets from `{cfg.selection.strategy}` on `{cfg.selection.rule_name}` (validation); best patch: the highest "
        f"patching accuracy on the test frontier with the support mean within {eps:g} point(s) of zero-shot. "
        "Fine-tuning wall time, trainable parameters (per ingredient for a soup) and the peak resident memory "
        "while fine-tuning."
    )
    write_text_atomic(out / "comparison.md", f"{header}\n\n{table}\n\n![frontier](frontier.png)\n")
    write_json_atomic(out / marker, summary)
    summary["table"] = table
    return summary

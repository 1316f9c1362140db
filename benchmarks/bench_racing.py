"""Racing the grid sweep, replayed on finished runs: the same alpha as the full grid, with how many images?

Every evaluation record keeps which validation images were right (``correct`` in
``results.jsonl``), so a race over the 11-point grid can be replayed exactly from a finished
run: a candidate that reads images ``0:m`` of a task's racing order sees the same correctness as
if it had been evaluated on just those images (the model is deterministic). For every line of every
run found under the given directories (``paint patch`` runs, ``paint compare`` runs and their
seeds, ``paint scale`` cells), this script replays :func:`paint.selection.racing.race_grid` (the plain race) and
:func:`paint.selection.screening.screen_grid` (the race screened by the line's ends) and compares
their choices with the plain grid's (:func:`paint.selection.select_alpha` on the same records, the
pipeline's own rule), side by side in one table.

Images read are counted as the pipeline reads them: the plain race, alpha 0 and every candidate's
chunks; the screened race, alpha 0 and alpha 1 in full, every candidate's screened images, every
confirmation; out of what the full grid reads (every grid point, every image).

Printed: cases, how many chose the grid's alpha (with the 95% Wilson interval), and the share of
validation images read (mean, worst, how many lines read at most 40%), per setting; for the screened
race, also how many lines saw a settled image flip at a confirmed winner and how many needed a second
confirmation. The runs must have read every image at every alpha (``--no-race``; ``paint scale``
cells are replayed with each of their patching tasks alone and all together).

    .venv/bin/python benchmarks/bench_racing.py runs/compare-recipes runs/compare-recipes-medium
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from paint.evaluation.results import ResultsStore
from paint.selection import PAPER_GRID, select_alpha
from paint.selection.racing import RaceResult, RaceSettings, race_grid, racing_order
from paint.selection.screening import screen_grid
from paint.stats import decode_correct, wilson_interval


def run_tasks(run: Path) -> tuple[list[str], list[str]] | None:
    """(patching, support) task names of a patch, compare or scale-cell run directory (finished, or its config's)."""
    for name in ("comparison.json", "summary.json", "cell.json", "config.yaml"):
        path = run / name
        if path.is_file():
            s = yaml.safe_load(path.read_text()) if name.endswith(".yaml") else json.loads(path.read_text())
            if isinstance(s, dict) and "patch_tasks" in s and "support_tasks" in s:
                return _names(s["patch_tasks"]), _names(s["support_tasks"])
    return None


def _names(tasks: list) -> list[str]:
    """Task names from a summary's list of names or a config's list of names and task settings."""
    return [t if isinstance(t, str) else t["name"] for t in tasks]


def cases(roots: list[Path]) -> list[dict]:
    """Every line with the full grid on validation, per-image results for every task, and its run's tasks."""
    out = []
    for results in sorted(p for root in roots for p in root.rglob("results.jsonl")):
        tasks = run_tasks(results.parent)
        if tasks is None:
            continue
        patch, support = tasks
        lines: dict[str, dict] = defaultdict(dict)
        for rec in ResultsStore(results).records():
            if rec["split"] == "val" and "correct" in rec:
                lines[rec["model"]][(round(float(rec["alpha"]), 10), rec["task"])] = rec
        for line, recs in lines.items():
            for p in problems(patch, {t for _, t in recs}) if (results.parent / "cell.json").is_file() else [patch]:
                if all((a, t) in recs for a in PAPER_GRID for t in p + support):
                    out.append({"run": str(results.parent), "line": line, "patch": p, "support": support, "recs": recs})
    return out


def problems(patch: list[str], evaluated: set[str]) -> list[list[str]]:
    """A scale cell's selection problems on one line: its patching tasks evaluated there, together and each alone.

    A cell's lines serve several choices (a task patched alone; digits and counting jointly, in
    sequence, in parallel) and the records do not say which, so every line is replayed with all of
    its patching tasks as the patch set and, where there are several, with each alone.

    Example:
        >>> problems(["digits", "counting", "novel-font-digits"], {"digits", "counting", "shapes"})
        [['digits', 'counting'], ['digits'], ['counting']]
    """
    on = [t for t in patch if t in evaluated]
    return [on] + ([[t] for t in on] if len(on) > 1 else [])


def replay(
    case: dict, settings: RaceSettings, objective: str = "constrained", constraint: str = "mean", epsilon: float = 1.0
) -> tuple[float, RaceResult]:
    """(grid's alpha, the race) of one case: the plain race, or the screened one with ``settings.screen``."""
    recs, patch, support = case["recs"], case["patch"], case["support"]
    full = {key: decode_correct(r["correct"], int(r["n"])) for key, r in recs.items()}
    # exact accuracies (records written before paint stored exact fractions hold float32 means)
    sweep = [{"alpha": a, "val": {t: float(full[(a, t)].mean()) for t in patch + support}} for a in PAPER_GRID]
    grid = select_alpha(sweep, patch, support, objective, epsilon, constraint)["alpha"]
    rule = (objective, epsilon, constraint, settings)
    if settings.screen:

        def read_full(alpha: float) -> dict[str, np.ndarray]:
            return {t: full[(round(alpha, 10), t)] for t in patch + support}

        def read_rows(alpha: float, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {t: full[(round(alpha, 10), t)][r] for t, r in rows.items()}

        return grid, screen_grid(PAPER_GRID, patch, support, read_full, read_rows, *rule)
    sizes = {t: int(recs[(0.0, t)]["n"]) for t in patch + support}
    orders = {t: racing_order(t, n) for t, n in sizes.items()}

    def read(alpha: float, task: str, start: int, stop: int) -> np.ndarray:
        return full[(round(alpha, 10), task)][orders[task][start:stop]]

    return grid, race_grid(PAPER_GRID, sizes, patch, support, read, *rule)


def table_row(name: str, settings: RaceSettings | None, results: list[tuple[float, RaceResult]]) -> str:
    """One row of the table (``settings`` None: the full grid itself)."""
    same = sum(g == r.alpha for g, r in results)
    w = wilson_interval(same / len(results), len(results))
    reads = [r.fraction_read for _, r in results]
    knobs = "- | - | -" if settings is None else f"{settings.first:g} | {settings.growth:g} | {settings.z:g}"
    return (
        f"| {name} | {knobs} | {same}/{len(results)} | {100 * w.low:.0f}-{100 * w.high:.0f}% | "
        f"{100 * np.mean(reads):.0f}% | {100 * max(reads):.0f}% | {sum(f <= 0.4 for f in reads)}/{len(reads)} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("roots", nargs="+", type=Path)
    ap.add_argument("--z", type=float, nargs="+", default=[1.5, 2.0, 2.5])
    ap.add_argument("--first", type=float, nargs="+", default=[0.1])
    ap.add_argument("--growth", type=float, nargs="+", default=[2.0], help="each round reads this many times more")
    ap.add_argument("--modes", nargs="+", choices=["race", "screen"], default=["race", "screen"])
    ap.add_argument("--objective", choices=["constrained", "mean_accuracy"], default="constrained")
    ap.add_argument("--constraint", choices=["mean", "each"], default="mean", help="constrained: the support bound")
    args = ap.parse_args()
    found = cases(args.roots)
    if not found:
        raise SystemExit("no line with the full 11-point grid and per-image results on validation under these folders")
    runs = len({c["run"] for c in found})
    print(f"{len(found)} lines with the full 11-point grid on validation, from {runs} runs")
    print(
        "\n| mode | first | growth | z | same alpha as the grid | 95% Wilson interval | images read (mean) | images read (worst) | lines reading <= 40% |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rule = (args.objective, args.constraint)
    grid = [replay(c, RaceSettings(), *rule)[0] for c in found]
    print(table_row("full grid", None, [(g, RaceResult(g, [], 1, 1)) for g in grid]))  # every image read
    notes = []
    for mode in args.modes:
        for first in args.first:
            for growth in args.growth:
                for z in args.z:
                    settings = RaceSettings(first=first, growth=growth, z=z, screen=mode == "screen")
                    results = [replay(c, settings, *rule) for c in found]
                    print(table_row("screened race" if settings.screen else "race", settings, results))
                    notes += [f"{mode} first={first:g} growth={growth:g} z={z:g}: " + n for n in _notes(found, results)]
    print()
    print("\n".join(notes))


def _notes(found: list[dict], results: list[tuple[float, RaceResult]]) -> list[str]:
    """The lines whose choice differs, and the screened race's flips and second confirmations."""
    out = []
    flipped = [
        r for _, r in results if r.screening and any(any(f.values()) for f in r.screening["settled_flips"].values())
    ]
    again = [r for _, r in results if r.screening and len(r.screening["settled_flips"]) > 1]
    if any(r.screening for _, r in results):
        out.append(
            f"{len(flipped)} lines saw a settled image flip at a confirmed winner; {len(again)} confirmed a second"
        )
    for c, (g, r) in zip(found, results):
        if g != r.alpha:
            out.append(
                f"differs: {c['run']} {c['line'][:40]}: grid {g}, race {r.alpha} ({100 * r.fraction_read:.0f}% read)"
            )
    return out


if __name__ == "__main__":
    main()

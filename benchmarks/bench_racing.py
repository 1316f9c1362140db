"""Racing the grid sweep, replayed on finished runs: the same alpha as the full grid, with how many images?

Every evaluation record keeps which validation images were right (``correct`` in
``results.jsonl``), so a race over the 11-point grid can be replayed exactly from a finished
run: a candidate that reads images ``0:m`` of a task's racing order sees the same correctness as
if it had been evaluated on just those images (the model is deterministic). For every line of every
run found under the given directories (``paint patch`` runs, ``paint compare`` runs and their
seeds), this script replays :func:`paint.selection.racing.race_grid` and compares its choice with the
plain grid's (:func:`paint.selection.select_alpha` on the same records, the pipeline's own rule).

Printed: cases, how many chose the grid's alpha, and the share of validation images read
(mean, worst), per racing setting.

    .venv/bin/python benchmarks/bench_racing.py runs/compare-recipes runs/compare-recipes-medium
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from paint.evaluation.results import ResultsStore
from paint.selection import PAPER_GRID, select_alpha
from paint.selection.racing import RaceSettings, race_grid, racing_order
from paint.stats import decode_correct, wilson_interval


def run_tasks(run: Path) -> tuple[list[str], list[str]] | None:
    """(patching, support) task names of a finished patch or compare run directory."""
    for name in ("comparison.json", "summary.json"):
        path = run / name
        if path.is_file():
            s = json.loads(path.read_text())
            if "patch_tasks" in s and "support_tasks" in s:
                return list(s["patch_tasks"]), list(s["support_tasks"])
    return None


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
            if all((a, t) in recs for a in PAPER_GRID for t in patch + support):
                out.append({"run": str(results.parent), "line": line, "patch": patch, "support": support, "recs": recs})
    return out


def replay(case: dict, settings: RaceSettings, epsilon: float = 1.0) -> tuple[float, float, float]:
    """(grid's alpha, race's alpha, share of images read) of one case."""
    recs, patch, support = case["recs"], case["patch"], case["support"]
    full = {key: decode_correct(r["correct"], int(r["n"])) for key, r in recs.items()}
    # exact accuracies (records written before paint stored exact fractions hold float32 means)
    sweep = [{"alpha": a, "val": {t: float(full[(a, t)].mean()) for t in patch + support}} for a in PAPER_GRID]
    grid = select_alpha(sweep, patch, support, "constrained", epsilon, "mean")["alpha"]
    sizes = {t: int(recs[(0.0, t)]["n"]) for t in patch + support}
    orders = {t: racing_order(t, n) for t, n in sizes.items()}

    def read(alpha: float, task: str, start: int, stop: int) -> np.ndarray:
        return full[(round(alpha, 10), task)][orders[task][start:stop]]

    race = race_grid(PAPER_GRID, sizes, patch, support, read, "constrained", epsilon, "mean", settings)
    return grid, race.alpha, race.fraction_read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("roots", nargs="+", type=Path)
    ap.add_argument("--z", type=float, nargs="+", default=[2.0, 2.5, 3.0])
    ap.add_argument("--first", type=float, nargs="+", default=[0.1, 0.2])
    args = ap.parse_args()
    found = cases(args.roots)
    runs = len({c["run"] for c in found})
    print(f"{len(found)} lines with the full 11-point grid on validation, from {runs} runs")
    print("\n| first | z | same alpha as the grid | 95% Wilson interval | images read (mean) | images read (worst) |")
    print("|---|---|---|---|---|---|")
    for first in args.first:
        for z in args.z:
            results = [replay(c, RaceSettings(first=first, z=z)) for c in found]
            same = sum(g == r for g, r, _ in results)
            w = wilson_interval(same / len(results), len(results))
            reads = [f for _, _, f in results]
            print(
                f"| {first:g} | {z:g} | {same}/{len(results)} | {100 * w.low:.0f}-{100 * w.high:.0f}% | "
                f"{100 * np.mean(reads):.0f}% | {100 * max(reads):.0f}% |"
            )
            for c, (g, r, f) in zip(found, results):
                if g != r:
                    print(f"  differs: {c['run']} {c['line'][:40]}: grid {g}, race {r} ({100 * f:.0f}% read)")


if __name__ == "__main__":
    main()

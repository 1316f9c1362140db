"""The grid chosen by racing (``selection.race``) on a task pool: the plain race, or the race screened by the ends.

:func:`choose_by_race` runs :func:`paint.selection.racing.race_grid` with the pool's chunk reader
(``val[race:<start>:<stop>]`` records), or, with ``screen``,
:func:`paint.selection.screening.screen_grid` with :func:`full_reader` (alpha 0 and alpha 1: the
ordinary ``val`` records, shared with the plain grid) and :func:`rows_reader` (each candidate's
rows of a round: ``val[screen:<digest>]`` records). Every record keeps its ``n``, the images that
evaluation read, and a resumed race reads its records back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from paint.pipeline.pool import Line, TaskPool
from paint.progress import phase
from paint.selection import SelectionConfig, select_candidates
from paint.selection.racing import RaceResult, RaceSettings, race_grid
from paint.selection.screening import FullReader, RowsReader, screen_grid
from paint.stats import decode_correct


def choose_by_race(
    pool: TaskPool,
    line: Line,
    cfg: SelectionConfig,
    patch: Sequence[str],
    support: Sequence[str],
    settings: RaceSettings | None = None,
) -> tuple[float, str, dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(alpha, rule, every rule's choice, sweep, search record) of the grid's choice by racing.

    ``settings`` default to ``cfg.race_settings()``. The sweep holds what read every image: alpha 0 and
    the survivors (plain race), or alpha 0, alpha 1 and the confirmed winners (screened race); the
    pool's other tasks (report-only ones) are read in full at those points.
    """
    if settings is None:
        race = cfg.race_settings()
        settings = RaceSettings(**race.model_dump()) if race is not None else RaceSettings()
    where = f", {line.id.split('/')[0]}" if "/" in line.id else ""
    kind = "race the grid, screened by its ends" if settings.screen else "race the grid"
    with phase(f"{kind} ({len(cfg.points())} alphas, val{where})"):
        race = _race(pool, line, cfg, patch, support, settings)
    sweep = [{"alpha": a, "val": dict(acc)} for a, acc in sorted(race.accuracy.items())]
    others = [t.name for t in pool.tasks if t.name not in {*patch, *support}]
    if others:  # report-only tasks (held-out counts, say): read in full at the points the sweep holds
        for point in sweep:
            got = pool.evaluate_line(line, point["alpha"], "val", others)
            point["val"].update({t: m["accuracy"] for t, m in got.items()})
    candidates = select_candidates(sweep, patch, support, cfg.epsilon)
    rule = f"{'screened-race' if settings.screen else 'race'}:grid/{cfg.rule_name}"
    return race.alpha, rule, candidates, sweep, race.record()


def _race(
    pool: TaskPool,
    line: Line,
    cfg: SelectionConfig,
    patch: Sequence[str],
    support: Sequence[str],
    settings: RaceSettings,
) -> RaceResult:
    rule = (cfg.objective, cfg.epsilon, cfg.constraint, settings)
    if settings.screen:
        tasks = [*patch, *support]
        return screen_grid(cfg.points(), patch, support, full_reader(pool, line, tasks), rows_reader(pool, line), *rule)
    sizes = {t: len(pool.task(t).labels["val"]) for t in (*patch, *support)}
    return race_grid(cfg.points(), sizes, patch, support, pool.race_reader(line), *rule)


def full_reader(pool: TaskPool, line: Line, tasks: Sequence[str], split: str = "val") -> FullReader:
    """``read_full(alpha)``: every image's correctness of ``tasks`` at theta(alpha), as the plain grid stores it."""

    def read(alpha: float) -> dict[str, np.ndarray]:
        got = pool.evaluate_line(line, alpha, split, tasks)
        return {t: decode_correct(m["correct"], int(m["n"])) for t, m in got.items()}

    return read


def rows_key(rows: Mapping[str, np.ndarray]) -> str:
    """A short digest of a read's rows per task: its records' split name is ``<split>[screen:<digest>]``.

    Example:
        >>> rows_key({"digits": np.array([3, 1])}) == rows_key({"digits": np.array([3, 1])}) != rows_key({"digits": np.array([1, 3])})
        True
    """
    h = hashlib.blake2b(digest_size=8)
    for t in sorted(rows):
        h.update(t.encode("utf-8") + b"\0" + np.asarray(rows[t], dtype=np.int64).tobytes() + b"\0")
    return h.hexdigest()


def rows_reader(pool: TaskPool, line: Line, split: str = "val") -> RowsReader:
    """``read_rows(alpha, {task: rows})``: the correctness of those rows of ``split`` at theta(alpha).

    One evaluation per call (the state loaded once for every task), through a pool whose tasks hold
    just those rows as the split ``<split>[screen:<digest>]``: each task's record is stored under
    that name with its ``n``, and read back when the same read is asked again (a resumed race).
    """

    def read(alpha: float, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = f"{split}[screen:{rows_key(rows)}]"
        tasks = []
        for t, r in rows.items():
            task = pool.task(t)
            tasks.append(replace(task, images={name: task.images[split][r]}, labels={name: task.labels[split][r]}))
        sub = TaskPool(pool.model, pool.spec, tasks, pool.store, pool.batch_size, bundle=pool.bundle)
        got = sub.evaluate_line(line, alpha, name, list(rows))
        return {t: decode_correct(m["correct"], int(m["n"])) for t, m in got.items()}

    return read

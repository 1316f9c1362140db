"""A race screened by the line's end points: the candidates read only the images that can change along the line.

The grid evaluates alpha 0 and alpha 1 on every image anyway. An image right at both ends (*settled*)
almost always stays right at every alpha between them, and then adds exactly zero to a candidate's
change against alpha 0. The other images are *screened*: those whose correctness differs between
the ends, and those wrong at both (an interpolated model often gets some of these right: on the
offline world's lines 96% of the images that changed at an inner alpha without changing between the
ends were wrong at both ends, and only 4% right at both). :func:`screen_grid` therefore

1. reads alpha 0 and alpha 1 on every image (``read_full``);
2. races the grid with the plain race's rounds and elimination rules
   (:func:`paint.selection.racing.race_rounds`) on each task's **screened** images only, in the
   task's racing order, the settled ones counted as unchanged. The estimate is post-stratified by
   the ends (right at alpha 0 and wrong at alpha 1: can only get worse; wrong at alpha 0: can only
   get better; each group's size is known); its interval carries the finite-population correction
   of images read without replacement (all read: no uncertainty left) and a pseudo-deviation
   against small samples that happen to agree (:class:`paint.selection.racing.Scale`);
3. takes the grid's rule on the survivors' split accuracies so reconstructed and **confirms** the
   winner on the rest of its split (its settled images). Where a settled image did flip, the
   winner's measured accuracies replace the guess, the flipped images join the screen (every
   survivor reads them), the candidates it had beaten come back (reading the rest of their
   screened images), and the rule is taken again; a new winner is confirmed in turn, until the
   winner is one whose every image was read.

A settled image can only go wrong between the ends, so the screen never underestimates a
candidate: one ruled out on its screened images is ruled out in truth, a settled image that flips
at a candidate never confirmed only lowers a candidate that lost anyway, and the confirmed winner's
accuracies are exact. The choice can differ from the full grid's only where the race's intervals
excluded the winner (``z``; measured in ``docs/choosing_alpha.md``; a test checks that with
intervals too wide to exclude anything it is the grid's on rough random worlds). Alphas outside
[0, 1] are refused: off the segment nothing says a settled image stays put. Pure: the caller
supplies the reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from paint.errors import PaintError
from paint.selection.racing import (
    RaceResult,
    RaceSettings,
    Scale,
    check_objective,
    exact_choice,
    race_rounds,
    racing_order,
    schedule,
)

FullReader = Callable[[float], Mapping[str, np.ndarray]]  # alpha -> {task: bool per image of the split}
# (alpha, {task: rows of the split}) -> {task: bool per row}; one call per candidate and round
RowsReader = Callable[[float, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
ENDS = (0.0, 1.0)


def screened_rows(c0: np.ndarray, c1: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The rows that are not right at both alpha 0 and alpha 1 (they may change along the line), in the racing ``order``.

    Example:
        >>> screened_rows(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool), np.array([3, 2, 1, 0]))
        array([3, 2, 1])
    """
    return order[~(c0[order] & c1[order])]


def screen_grid(
    alphas: Sequence[float],
    patch: Sequence[str],
    support: Sequence[str],
    read_full: FullReader,
    read_rows: RowsReader,
    objective: str = "constrained",
    epsilon: float = 1.0,
    constraint: str = "mean",
    settings: RaceSettings = RaceSettings(screen=True),
    seed: int = 0,
) -> RaceResult:
    """The grid's choice over ``alphas`` (0 and 1 added) by a race on the screened images; see the module docstring.

    ``images_read`` counts every image read: alpha 0 and alpha 1 in full, each candidate's rounds, the
    confirmations; ``images_full`` is what the plain grid reads.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> u = {"p": rng.random(400), "s": rng.random(1000)}
        >>> def at(a):  # nested: right at alpha is right at every larger (patch) or smaller (support) alpha
        ...     return {"p": u["p"] < 0.5 + 0.4 * a, "s": u["s"] < 0.97 - (0.1 * a if a > 0.5 else 0.0)}
        >>> grid = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        >>> r = screen_grid(grid, ["p"], ["s"], at, lambda a, rows: {t: at(a)[t][i] for t, i in rows.items()})
        >>> r.alpha, r.screening["screened"], round(r.fraction_read, 2)
        (0.4, {'p': 217, 's': 110}, 0.54)
    """
    check_objective(objective)
    grid = sorted({*ENDS, *(float(a) for a in alphas)})
    if grid[0] < 0.0 or grid[-1] > 1.0:
        raise PaintError(f"screening races alphas in [0, 1] (between the line's ends), not {grid[0]:g}..{grid[-1]:g}")
    tasks = [*patch, *support]
    ends = {a: {t: np.asarray(c, dtype=bool) for t, c in read_full(a).items() if t in tasks} for a in ENDS}
    sizes = {t: ends[0.0][t].size for t in tasks}
    rows = {t: screened_rows(ends[0.0][t], ends[1.0][t], racing_order(t, sizes[t], seed)) for t in tasks}
    # 1: right at alpha 0 and wrong at 1 (can only get worse); 0: wrong at 0 and right at 1; 2: wrong at both
    strata = {t: np.where(ends[0.0][t][rows[t]], 1, np.where(ends[1.0][t][rows[t]], 0, 2)) for t in tasks}
    counts = {t: {s: int((strata[t] == s).sum()) for s in (0, 1, 2) if (strata[t] == s).any()} for t in tasks}
    scale = Scale(strata, counts, sizes)

    def fetch(a: float, spans: Mapping[str, tuple[int, int]]) -> tuple[dict[str, np.ndarray], int]:
        want = {t: rows[t][s:e] for t, (s, e) in spans.items()}
        if a in ENDS:  # read in full already
            return {t: ends[a][t][r] for t, r in want.items()}, 0
        got = read_rows(a, want)
        return {t: np.asarray(got[t], dtype=bool) for t in want}, sum(r.size for r in want.values())

    plans = {t: schedule(rows[t].size, settings.first, settings.growth) for t in tasks}
    alive, correct, read_total, rounds = race_rounds(
        grid, plans, patch, support, fetch, objective, epsilon, constraint, settings.z, scale
    )
    known = _Known(ends[0.0], read_rows)
    for a in ENDS:
        known.start(a, {t: np.arange(sizes[t]) for t in tasks}, ends[a])
    for a in alive:
        if a not in ENDS:
            known.start(a, rows, correct[a])
    beaten = {e["alpha"]: e["by"] for r in rounds for e in r["eliminated"] if "by" in e}
    pool, confirmed, flips, revived = list(alive), list(ENDS), {}, []
    screen = {t: _mask(sizes[t], rows[t]) for t in tasks}  # screened, then also every settled image seen to flip
    while (alpha := exact_choice(pool, known.split, patch, support, objective, epsilon, constraint)) not in confirmed:
        changed = known.read(alpha, {t: np.ones(sizes[t], bool) for t in tasks})
        flips[alpha] = {t: int(c.sum()) for t, c in changed.items()}
        confirmed.append(alpha)
        if any(flips[alpha].values()):  # screening was wrong here: its flips join the screen; what it beat comes back
            screen = {t: screen[t] | changed[t] for t in tasks}
            for a in sorted(a for a, b in beaten.items() if b == alpha and a not in pool):
                known.start(a, rows, correct[a])
                pool.append(a)
                revived.append(a)
            for a in pool:
                known.read(a, screen)
    full = len(grid) * sum(sizes.values())
    accuracy = {a: {t: float(known.split[a][t].mean()) for t in tasks} for a in sorted({0.0, *confirmed})}
    record = {
        "screened": {t: int(r.size) for t, r in rows.items()},
        "confirmed": sorted(confirmed),
        "settled_flips": {f"{a:g}": f for a, f in flips.items()},
        "revived": revived,
    }
    read_total += 2 * sum(sizes.values()) + known.total  # the ends in full, the confirmations, the re-screens
    return RaceResult(alpha, pool, read_total, full, rounds, accuracy, record)


def _mask(n: int, rows: np.ndarray) -> np.ndarray:
    out = np.zeros(n, bool)
    out[rows] = True
    return out


class _Known:
    """Each candidate's split correctness as screening knows it (alpha 0's where it read nothing) and what it read."""

    def __init__(self, ref: Mapping[str, np.ndarray], read_rows: RowsReader) -> None:
        self.ref, self.read_rows, self.total = ref, read_rows, 0
        self.split: dict[float, dict[str, np.ndarray]] = {}
        self.seen: dict[float, dict[str, np.ndarray]] = {}

    def start(self, alpha: float, rows: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray]) -> None:
        """What the race read: ``values`` of the first ``len(values[t])`` of ``rows[t]`` (for free: read already)."""
        self.split[alpha], self.seen[alpha] = {}, {}
        for t, c in self.ref.items():
            r = rows[t][: values[t].size]
            self.split[alpha][t], self.seen[alpha][t] = c.copy(), _mask(c.size, r)
            self.split[alpha][t][r] = values[t]

    def read(self, alpha: float, want: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Read the rows in ``want`` (masks) not read yet at ``alpha``, in one call; the rows that differ from the guess."""
        rows = {t: np.flatnonzero(w & ~self.seen[alpha][t]) for t, w in want.items()}
        rows = {t: r for t, r in rows.items() if r.size}
        got = self.read_rows(alpha, rows) if rows else {}
        changed = {t: np.zeros(c.size, bool) for t, c in self.ref.items()}
        for t, r in rows.items():
            new = np.asarray(got[t], dtype=bool)
            changed[t][r] = new != self.split[alpha][t][r]
            self.split[alpha][t][r], self.seen[alpha][t][r] = new, True
            self.total += r.size
        return changed

"""A grid sweep that races: candidates read a growing, shared subset of the validation images and
drop out as soon as their intervals rule them out; the survivors finish on the whole split.

Every evaluated alpha of a plain grid reads every validation image of every task. Most candidates
are settled long before that: their support change is far past the bound, or another candidate
that surely holds the bound patches surely better. :func:`race_grid` reads each task's images in
a fixed seeded order, in rounds of growing size (``first`` of them, then ``growth`` times more,
up to all), and after each round removes

- a candidate that **surely breaks the support bound**: the upper end of its support change's
  interval (paired with alpha 0 over the same images) is below ``-epsilon``;
- a candidate that is **surely beaten**: some candidate whose change surely holds the bound has a
  higher patching accuracy (``mean_accuracy``: a higher objective) by more than ``z`` paired
  standard errors.

Alpha 0 (the reference) always reads every round. The last round reads every image, so the
survivors are compared exactly as the grid compares them (the same rule, ties to the smaller
alpha): the race changes the answer only when an interval excluded the grid's winner, which
``z`` makes rare. Pure: the caller supplies ``read(alpha, task, start, stop)``, the correctness
of images ``start:stop`` of the task's racing order at alpha (:func:`racing_order`).

``RaceSettings(screen=True)`` races on the images that are not right at both of the line's ends
only (:mod:`paint.selection.screening`; what ``selection.race: auto``, the default, runs);
:func:`race_rounds` and :func:`exact_choice` are the rounds and the final rule both races share.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from paint.errors import PaintError

ChunkReader = Callable[[float, str, int, int], np.ndarray]  # (alpha, task, start, stop) -> bool per image
# (alpha, {task: (start, stop)}) -> ({task: bool per image}, images read): one round's reads of one candidate
Fetch = Callable[[float, Mapping[str, tuple[int, int]]], tuple[dict[str, np.ndarray], int]]


def racing_order(task: str, n: int, seed: int = 0) -> np.ndarray:
    """The order in which a race reads a task's ``n`` validation images (seeded, the same for every alpha)."""
    return np.random.default_rng([zlib.crc32(task.encode("utf-8")), seed, 0x7ACE]).permutation(n)


def schedule(n: int, first: float, growth: float) -> list[int]:
    """Cumulative image counts of the rounds: ``ceil(first * n)``, then ``growth`` times more, ..., ``n``.

    Example:
        >>> schedule(1000, 0.1, 2.0)
        [100, 200, 400, 800, 1000]
    """
    if not 0.0 < first <= 1.0 or growth <= 1.0:
        raise PaintError(f"racing needs 0 < first <= 1 and growth > 1, got first={first}, growth={growth}")
    out, frac = [], first
    while True:
        m = min(n, max(1, math.ceil(frac * n)))
        if not out or m > out[-1]:
            out.append(m)
        if m >= n:
            return out
        frac *= growth


@dataclass(frozen=True)
class RaceSettings:
    """``first``: the first round's share of each task's images; ``growth``: each round's factor; ``z``:
    standard errors a difference must clear to remove a candidate (2.5: about 0.6% one-sided per test);
    ``screen``: race on the images not right at both alpha 0 and alpha 1 only
    (:func:`paint.selection.screening.screen_grid`)."""

    first: float = 0.1
    growth: float = 2.0
    z: float = 2.5
    screen: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.first <= 1.0 or self.growth <= 1.0 or self.z <= 0.0:
            raise PaintError(
                f"racing needs 0 < first <= 1, growth > 1 and z > 0, got first={self.first}, "
                f"growth={self.growth}, z={self.z}"
            )


@dataclass(frozen=True)
class Scale:
    """How a race's sample stands for each task's whole split (screening; ``None`` in the plain race).

    The race reads a subset of each task's images, split into strata of known sizes (screening:
    the images right at alpha 0 and wrong at alpha 1, and the reverse); the rest of the split is
    counted as unchanged. ``strata[t]``: the stratum of each image in the order the race reads
    task ``t``; ``sizes[t]``: images per stratum; ``split[t]``: images in the task's split.
    """

    strata: dict[str, np.ndarray]
    sizes: dict[str, dict[int, int]]
    split: dict[str, int]

    def diff(self, a: np.ndarray, b: np.ndarray, t: str) -> tuple[float, float]:
        """(change a - b of task ``t``'s split accuracy, its variance) from the images both read, post-stratified.

        Each stratum's mean difference is weighted by its share of the split; its variance carries the
        finite-population correction (1 - m / N) of m images read without replacement from N, and one
        pseudo-deviation (a sample that happens to agree is not taken as certain); a stratum not read yet
        counts as unknown (any change in [-1, 1]).
        """
        labels, d = self.strata[t][: a.size], a.astype(float) - b.astype(float)
        est = var = 0.0
        for s, n_s in self.sizes[t].items():
            w, ds = n_s / self.split[t], d[labels == s]
            if ds.size == 0:
                var += w * w
                continue
            est += w * float(ds.mean())
            s2 = (float(((ds - ds.mean()) ** 2).sum()) + 1.0) / ds.size
            var += w * w * s2 / ds.size * max(0.0, 1.0 - ds.size / n_s)
        return est, var


@dataclass
class RaceResult:
    """The race's choice and what it read."""

    alpha: float
    survivors: list[float]  # the candidates that read every image
    images_read: int  # images evaluated, summed over candidates (alpha 0 included)
    images_full: int  # what the plain grid reads: every candidate, every image
    rounds: list[dict] = field(default_factory=list)  # per round: images per task, eliminated (alpha, why)
    accuracy: dict[float, dict[str, float]] = field(default_factory=dict)  # what read every image: full-split accuracy
    screening: dict | None = None  # screen: screened images per task, confirmed alphas, settled images that flipped

    @property
    def fraction_read(self) -> float:
        return self.images_read / self.images_full

    def record(self) -> dict:
        return {
            "alpha": self.alpha,
            "survivors": self.survivors,
            "images_read": self.images_read,
            "images_full": self.images_full,
            "fraction_read": round(self.fraction_read, 4),
            "rounds": self.rounds,
        } | ({"screening": self.screening} if self.screening is not None else {})


def _acc(c: Mapping[str, np.ndarray], tasks: Sequence[str]) -> float:
    return float(np.mean([c[t].mean() for t in tasks])) if tasks else 0.0


def _paired_se(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], tasks: Sequence[str]) -> float:
    """Standard error of mean_t (acc_t(a) - acc_t(b)), paired over each task's images."""
    if not tasks:
        return 0.0
    var = 0.0
    for t in tasks:
        d = a[t].astype(float) - b[t].astype(float)
        var += d.var(ddof=1) / d.size if d.size > 1 else 0.25
    return math.sqrt(var) / len(tasks)


def _gap(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], tasks: Sequence[str], scale: Scale
) -> tuple[float, float]:
    """(mean_t of the change a - b of task t's split accuracy, its standard error) through ``scale``."""
    if not tasks:
        return 0.0, 0.0
    parts = [scale.diff(a[t], b[t], t) for t in tasks]
    return float(np.mean([e for e, _ in parts])), math.sqrt(sum(v for _, v in parts)) / len(tasks)


def race_grid(
    alphas: Sequence[float],
    sizes: Mapping[str, int],
    patch: Sequence[str],
    support: Sequence[str],
    read: ChunkReader,
    objective: str = "constrained",
    epsilon: float = 1.0,
    constraint: str = "mean",
    settings: RaceSettings = RaceSettings(),
) -> RaceResult:
    """The grid's choice over ``alphas`` (0 added) by racing; see the module docstring.

    Args:
        alphas: the grid.
        sizes: validation images per task (patching and support tasks).
        patch, support: task names.
        read: ``(alpha, task, start, stop) -> correctness`` of images ``start:stop`` of the task's racing order.
        objective: ``constrained`` (largest patching accuracy with the support change within ``epsilon``
            points, of their ``mean`` or ``each``) or ``mean_accuracy``.

    Example:
        >>> truth = {0.0: 0.5, 0.5: 0.8, 1.0: 0.9}  # patching accuracy; the support task drops at alpha 1
        >>> def read(a, task, start, stop):
        ...     rate = truth[a] if task == "p" else (0.97 if a < 1.0 else 0.80)
        ...     return np.arange(start, stop) % 100 < rate * 100
        >>> r = race_grid([0.0, 0.5, 1.0], {"p": 400, "s": 400}, ["p"], ["s"], read)
        >>> r.alpha, r.images_read < r.images_full
        (0.5, True)
    """
    check_objective(objective)
    if settings.screen:
        raise PaintError("race settings with screen: true read rows of the split: call screen_grid, not race_grid")
    grid = sorted({0.0, *(float(a) for a in alphas)})
    tasks = [*patch, *support]
    plans = {t: schedule(int(sizes[t]), settings.first, settings.growth) for t in tasks}

    def fetch(a: float, spans: Mapping[str, tuple[int, int]]) -> tuple[dict[str, np.ndarray], int]:
        chunks = {t: np.asarray(read(a, t, s, e), dtype=bool) for t, (s, e) in spans.items()}
        return chunks, sum(c.size for c in chunks.values())

    alive, correct, read_total, rounds = race_rounds(
        grid, plans, patch, support, fetch, objective, epsilon, constraint, settings.z
    )
    alpha = exact_choice(alive, correct, patch, support, objective, epsilon, constraint)
    full = len(grid) * sum(int(sizes[t]) for t in tasks)
    accuracy = {a: {t: float(correct[a][t].mean()) for t in tasks} for a in sorted({0.0, *alive})}
    return RaceResult(alpha, alive, read_total, full, rounds, accuracy)


def check_objective(objective: str) -> None:
    """Raise unless a race can choose with ``objective`` (the grid's accuracy rules)."""
    if objective not in ("constrained", "mean_accuracy"):
        raise PaintError(f"racing chooses with objective 'constrained' or 'mean_accuracy', not {objective!r}")


def race_rounds(
    grid: Sequence[float],
    plans: Mapping[str, Sequence[int]],
    patch: Sequence[str],
    support: Sequence[str],
    fetch: Fetch,
    objective: str,
    epsilon: float,
    constraint: str,
    z: float,
    scale: Scale | None = None,
) -> tuple[list[float], dict[float, dict[str, np.ndarray]], int, list[dict]]:
    """The rounds of a race: (survivors, what each candidate read, images read, per-round record).

    Round r reads, for every live candidate (and alpha 0, the reference, always), positions up to
    ``plans[t][r]`` of each task's order through ``fetch``; after every round but the last the
    intervals remove candidates (see the module docstring).
    """
    tasks = [*patch, *support]
    n_rounds = max(len(p) for p in plans.values())
    correct: dict[float, dict[str, np.ndarray]] = {a: {t: np.zeros(0, bool) for t in tasks} for a in grid}
    alive, read_total, rounds = list(grid), 0, []
    for r in range(n_rounds):
        ends = {t: plans[t][min(r, len(plans[t]) - 1)] for t in tasks}
        for a in alive if 0.0 in alive else [0.0, *alive]:
            spans = {t: (correct[a][t].size, ends[t]) for t in tasks if ends[t] > correct[a][t].size}
            if spans:
                chunks, n_read = fetch(a, spans)
                read_total += n_read
                for t, chunk in chunks.items():
                    correct[a][t] = np.concatenate([correct[a][t], chunk])
        last = r == n_rounds - 1
        out: list[tuple[float, str, float | None]] = []
        if not last:
            out = _eliminate(alive, correct, patch, support, objective, epsilon / 100.0, constraint, z, scale)
            alive = [a for a in alive if a not in {x for x, _, _ in out}]
        gone = [{"alpha": a, "why": w} | ({"by": b} if b is not None else {}) for a, w, b in out]
        rounds.append({"images": ends, "alive": len(alive), "eliminated": gone})
    return alive, correct, read_total, rounds


def _changes(c: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], support: Sequence[str]) -> dict[str, float]:
    return {t: float(c[t].mean() - ref[t].mean()) for t in support}


def _bounds(
    c: Mapping[str, np.ndarray],
    ref: Mapping[str, np.ndarray],
    support: Sequence[str],
    constraint: str,
    z: float,
    scale: Scale | None,
) -> list[tuple[float, float]]:
    """(low, high) of each bounded support change: their mean, or each task's."""
    groups = [list(support)] if constraint == "mean" else [[t] for t in support]
    out = []
    for g in groups:
        if scale is None:
            change, se = float(np.mean(list(_changes(c, ref, g).values()))), _paired_se(c, ref, g)
        else:
            change, se = _gap(c, ref, g, scale)
        out.append((change - z * se, change + z * se))
    return out


def _eliminate(
    alive, correct, patch, support, objective, eps, constraint, z, scale
) -> list[tuple[float, str, float | None]]:
    """The candidates a round's intervals rule out, with why (and by which candidate, when beaten)."""
    ref = correct[0.0]
    out: list[tuple[float, str, float | None]] = []
    if objective == "constrained" and support:
        bounds = {a: _bounds(correct[a], ref, support, constraint, z, scale) for a in alive}
        for a in alive:
            if a != 0.0 and any(high < -eps for _, high in bounds[a]):
                out.append((a, "breaks the support bound", None))
        safe = [a for a in alive if all(low >= -eps for low, _ in bounds[a])]
        score_tasks = list(patch)
    else:
        safe = list(alive)
        score_tasks = [*patch, *support]  # mean_accuracy: the mean of the two group means, below
    gone = {a for a, _, _ in out}

    def score(a: float) -> float:
        if objective == "mean_accuracy" and support:
            return 0.5 * (_acc(correct[a], patch) + _acc(correct[a], support))
        return _acc(correct[a], patch)

    def se(a: float, b: float) -> float:
        if objective == "mean_accuracy" and support:
            return 0.5 * math.hypot(
                _paired_se(correct[a], correct[b], patch), _paired_se(correct[a], correct[b], support)
            )
        return _paired_se(correct[a], correct[b], score_tasks)

    def beats(b: float, a: float) -> bool:
        """Whether b's objective is surely higher than a's."""
        if scale is None:
            return score(b) - score(a) > z * se(b, a)
        if objective == "mean_accuracy" and support:
            (gp, sp), (gs, ss) = (
                _gap(correct[b], correct[a], patch, scale),
                _gap(correct[b], correct[a], support, scale),
            )
            return 0.5 * (gp + gs) > z * 0.5 * math.hypot(sp, ss)
        gain, err = _gap(correct[b], correct[a], score_tasks, scale)
        return gain > z * err

    for a in alive:
        if a in gone:
            continue
        for b in safe:
            if b != a and b not in gone and beats(b, a):
                out.append((a, f"beaten by alpha {b:g}", b))
                gone.add(a)
                break
    return out


def exact_choice(
    alive: Sequence[float],
    correct: Mapping[float, Mapping[str, np.ndarray]],
    patch: Sequence[str],
    support: Sequence[str],
    objective: str,
    epsilon: float,
    constraint: str,
) -> float:
    """The grid's own rule on the candidates' full-split results (ties to the smaller alpha)."""
    ref, eps = correct[0.0], epsilon / 100.0
    best, best_key = 0.0, None
    for a in sorted(alive):
        if objective == "constrained" and support:
            changes = _changes(correct[a], ref, support)
            worst = float(np.mean(list(changes.values()))) if constraint == "mean" else min(changes.values())
            if worst < -eps - 1e-12:
                continue
            key = _acc(correct[a], patch)
        else:
            key = 0.5 * (_acc(correct[a], patch) + _acc(correct[a], support)) if support else _acc(correct[a], patch)
        if best_key is None or key > best_key + 1e-12:
            best, best_key = a, key
    return best

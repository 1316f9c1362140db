"""Uncertainty of compared numbers: intervals over seeds and over a test split's images.

Pure functions on plain numbers; the studies call them and never compute an interval themselves.

- :func:`seed_interval`: the mean of a figure over repeated runs (seeds) with a Student-t
  interval (two-sided, ``confidence``), the spread a reader compares between methods or sizes;
- :func:`wilson_interval`: the sampling error of one accuracy measured on ``n`` test images
  (Wilson score interval), the part of the spread that a larger test split would remove;
- :func:`image_interval`: the same for a figure averaged over tasks and seeds (a bootstrap over
  the test images, which every seed shares);
- :func:`paired_difference`: method A minus method B on the same seeds and test images, with an
  interval that adds the spread over seeds (t, from 3 seeds) to a paired bootstrap over images,
  and whether the difference is established (the interval excludes 0);
- :func:`paired_drop_lower`: the lower confidence bound of an accuracy change measured on one
  validation split (paired over its images): the selection's ``bound_confidence`` margin.

Per-image correctness travels as :func:`encode_correct` strings (one bit per image) in every
evaluation record.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from paint.errors import PaintError

Correct = Sequence[Sequence[np.ndarray]]  # [seed][task] -> bool per test image (the same images in every seed)
BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided interval; ``half`` is the half-width (nan below two values)."""

    mean: float
    low: float
    high: float
    n: int
    std: float  # sample standard deviation (ddof 1); nan below two values

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2.0

    def record(self, ndigits: int = 4) -> dict[str, float | int | None]:
        """JSON-ready (nan becomes None)."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else (round(v, ndigits) if isinstance(v, float) else v))
            for k, v in asdict(self).items()
        }


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise PaintError(f"confidence must be between 0 and 1, got {confidence}")


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean over seeds with a Student-t interval: mean +- t_{(1+c)/2, n-1} * s / sqrt(n).

    One value has no spread: its interval is (nan, nan) and its std nan, never a made-up zero.

    Example:
        >>> iv = seed_interval([80.0, 82.0, 84.0])
        >>> round(iv.mean, 1), round(iv.half, 2)
        (82.0, 4.97)
    """
    from scipy import stats

    _check_confidence(confidence)
    xs = [float(v) for v in values]
    if not xs:
        raise PaintError("an interval needs at least one value")
    if any(math.isnan(v) or math.isinf(v) for v in xs):
        raise PaintError("an interval over seeds needs finite values")
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in xs) / (n - 1))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std)


def wilson_interval(accuracy: float, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of an accuracy (a fraction in [0, 1]) measured on ``n`` images.

    Example:
        >>> iv = wilson_interval(0.9, 1000)
        >>> round(iv.low, 4), round(iv.high, 4)
        (0.8798, 0.9171)
    """
    from scipy import stats

    _check_confidence(confidence)
    if n < 1:
        raise PaintError(f"an accuracy interval needs at least one image, got n={n}")
    if not 0.0 <= accuracy <= 1.0:
        raise PaintError(f"accuracy must be a fraction in [0, 1], got {accuracy}")
    z = float(stats.norm.ppf((1.0 + confidence) / 2.0))
    denom = 1.0 + z * z / n
    centre = (accuracy + z * z / (2 * n)) / denom
    half = z * math.sqrt(accuracy * (1.0 - accuracy) / n + z * z / (4 * n * n)) / denom
    return Interval(accuracy, max(0.0, centre - half), min(1.0, centre + half), n, math.nan)


def encode_correct(correct: np.ndarray | Sequence[bool]) -> str:
    """Which images were classified correctly, one bit per image (base64 of ``numpy.packbits``).

    1,000 images take 168 characters, so every evaluation record can keep them and two models
    evaluated on the same images can be compared image by image.

    Example:
        >>> decode_correct(encode_correct([True, False, True]), 3).tolist()
        [True, False, True]
    """
    bits = np.packbits(np.asarray(correct, dtype=bool))
    return base64.b64encode(bits.tobytes()).decode("ascii")


def decode_correct(code: str, n: int) -> np.ndarray:
    """The boolean vector :func:`encode_correct` wrote for ``n`` images."""
    bits = np.frombuffer(base64.b64decode(code.encode("ascii")), dtype=np.uint8)
    if bits.size != (n + 7) // 8:
        raise PaintError(f"a record's per-image correctness holds {8 * bits.size} bits, not {n} images")
    return np.unpackbits(bits)[:n].astype(bool)


def _per_image(correct: Correct) -> list[np.ndarray]:
    """Per task, each image's correctness averaged over seeds (seeds share the test images)."""
    if not correct or not correct[0]:
        raise PaintError("an interval over test images needs at least one seed and one task")
    k = len(correct[0])
    if any(len(seed) != k for seed in correct):
        raise PaintError("every seed must give the same tasks")
    out = []
    for t in range(k):
        rows = [np.asarray(seed[t], dtype=float) for seed in correct]
        if len({r.shape for r in rows}) != 1 or rows[0].size == 0:
            raise PaintError(f"task {t}: every seed must be measured on the same (non-empty) test images")
        out.append(np.mean(rows, axis=0))
    return out


def _bootstrap_means(per_image: Sequence[np.ndarray], samples: int, seed: int) -> np.ndarray:
    """``samples`` bootstrap replicates of mean_t mean_i x_t[i], images resampled within each task."""
    rng = np.random.default_rng(seed)
    reps = np.zeros(samples)
    for x in per_image:
        idx = rng.integers(0, x.size, size=(samples, x.size))
        reps += x[idx].mean(axis=1)
    return reps / len(per_image)


def _check_confidence_and_samples(confidence: float, samples: int) -> None:
    _check_confidence(confidence)
    if samples < 100:
        raise PaintError(f"a bootstrap needs at least 100 samples, got {samples}")


def image_interval(
    correct: Correct, confidence: float = 0.95, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> Interval:
    """The test split's own sampling error of a figure: the mean over tasks of each task's accuracy,
    averaged over seeds; a percentile bootstrap over test images (in points: 0-100).

    Example:
        >>> iv = image_interval([[np.array([True] * 90 + [False] * 10)]])
        >>> round(iv.mean, 1), 3.0 < iv.half < 8.0
        (90.0, True)
    """
    _check_confidence_and_samples(confidence, samples)
    per_image = _per_image(correct)
    point = 100.0 * float(np.mean([x.mean() for x in per_image]))
    reps = 100.0 * _bootstrap_means(per_image, samples, seed)
    lo, hi = np.quantile(reps, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(point, float(lo), float(hi), int(sum(x.size for x in per_image)), float(reps.std(ddof=1)))


@dataclass(frozen=True)
class Difference:
    """A minus B in points over the same seeds and test images, with its interval and its parts.

    ``seed_half``: the t half-width over the seeds' differences (nan below ``MIN_SEEDS_FOR_T``
    seeds: not counted); ``image_half``: the paired bootstrap's half-width over test images.
    The interval's half-width is their root sum of squares (independent sources of error).

    Example:
        >>> d = Difference(mean=2.0, low=0.5, high=3.5, seeds=3, seed_half=1.2, image_half=0.9)
        >>> d.half, d.established
        (1.5, True)
    """

    mean: float
    low: float
    high: float
    seeds: int
    seed_half: float
    image_half: float

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2.0

    @property
    def established(self) -> bool:
        """The interval excludes zero: the sign of the difference is established at its confidence."""
        return self.low > 0.0 or self.high < 0.0

    def record(self, ndigits: int = 3) -> dict[str, float | int | bool | None]:
        rec: dict[str, float | int | bool | None] = {
            k: (None if isinstance(v, float) and math.isnan(v) else (round(v, ndigits) if isinstance(v, float) else v))
            for k, v in asdict(self).items()
        }
        rec["established"] = self.established
        return rec


MIN_SEEDS_FOR_T = 3


def paired_difference(
    a: Correct, b: Correct, confidence: float = 0.95, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> Difference:
    """Method A minus method B on one figure (mean over tasks of accuracy, points), paired.

    ``a[s][t]`` and ``b[s][t]`` are the correctness of both methods on seed ``s``'s test images
    of task ``t``. The point estimate is the mean over seeds of the per-seed difference. Its
    error has two parts: how much the difference moves between seeds (fine-tuning and data
    split), a Student t interval over the per-seed differences from ``MIN_SEEDS_FOR_T`` seeds;
    and how much it would move on another test set, a paired bootstrap over images (the same
    resampled images for A and B). The two half-widths add in quadrature.

    Example:
        >>> a = [[np.array([True] * 80 + [False] * 20)]]
        >>> b = [[np.array([True] * 60 + [False] * 40)]]
        >>> d = paired_difference(a, b)
        >>> round(d.mean, 1), d.established
        (20.0, True)
    """
    from scipy import stats

    _check_confidence_and_samples(confidence, samples)
    if len(a) != len(b):
        raise PaintError(f"a paired difference needs the same seeds: {len(a)} vs {len(b)}")
    pa, pb = _per_image(a), _per_image(b)
    if [x.shape for x in pa] != [x.shape for x in pb]:
        raise PaintError("a paired difference needs both methods measured on the same test images")
    diffs = [x - y for x, y in zip(pa, pb, strict=True)]
    point = 100.0 * float(np.mean([d.mean() for d in diffs]))
    reps = 100.0 * _bootstrap_means(diffs, samples, seed)
    lo, hi = np.quantile(reps, [(1 - confidence) / 2, (1 + confidence) / 2])
    image_half = float(hi - lo) / 2.0
    n = len(a)
    seed_half = math.nan
    if n >= MIN_SEEDS_FOR_T:
        per_seed = [
            100.0
            * float(np.mean([np.mean(np.asarray(sa[t], float) - np.asarray(sb[t], float)) for t in range(len(sa))]))
            for sa, sb in zip(a, b, strict=True)
        ]
        sd = float(np.std(per_seed, ddof=1))
        seed_half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * sd / math.sqrt(n)
    half = math.sqrt(image_half**2 + (0.0 if math.isnan(seed_half) else seed_half**2))
    return Difference(point, point - half, point + half, n, seed_half, image_half)


def paired_drop_lower(after: Sequence[np.ndarray], before: Sequence[np.ndarray], confidence: float = 0.95) -> float:
    """Lower one-sided confidence bound (fraction) of mean_t (acc_t(after) - acc_t(before)).

    Paired over each task's images (the same validation images measured twice): the variance of
    task t's change is the sample variance of the per-image changes (-1, 0, +1) over n_t, and the
    tasks' changes are independent. The selection's ``bound_confidence`` holds this bound, not
    the point estimate, within epsilon of zero-shot.

    Example:
        >>> before = [np.ones(1000, bool)]
        >>> after = [np.r_[np.ones(990, bool), np.zeros(10, bool)]]
        >>> round(paired_drop_lower(after, before), 4)
        -0.0152
    """
    from scipy import stats

    _check_confidence(confidence)
    if len(after) != len(before) or not after:
        raise PaintError("a paired change needs the same, non-empty list of tasks before and after")
    mean, var = 0.0, 0.0
    for x, y in zip(after, before, strict=True):
        d = np.asarray(x, float) - np.asarray(y, float)
        if d.size < 2:
            raise PaintError("a paired change needs at least two images per task")
        mean += d.mean()
        var += d.var(ddof=1) / d.size
    k = len(after)
    return float(mean / k - stats.norm.ppf(confidence) * math.sqrt(var) / k)

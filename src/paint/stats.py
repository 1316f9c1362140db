"""Uncertainty of compared numbers: intervals over seeds and over a test split's images.

Pure functions on plain numbers; the studies call them and never compute an interval themselves.

- :func:`seed_interval`: the mean of a figure over repeated runs (seeds) with a Student-t
  interval (two-sided, ``confidence``), the spread a reader compares between methods or sizes;
- :func:`wilson_interval`: the sampling error of one accuracy measured on ``n`` test images
  (Wilson score interval), the part of the spread that a larger test split would remove.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from paint.errors import PaintError


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

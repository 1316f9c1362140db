"""Per-image margins: how far each validation image is from flipping, and what they predict along the line.

An image's *margin* at one alpha is the logit of its true class minus the best other logit; it is
classified correctly iff the margin is positive. Every evaluation computes the logits anyway, so
each record keeps its margins (float16, base64: :func:`encode_margins`; 2,000 images take 5,336
characters) beside the per-image correctness. Along the interpolation line each margin is a
smooth function of alpha, so the margins at a few evaluated alphas, interpolated per image
(:func:`predict_margins`, a cubic spline), predict which images are correct at every
alpha of a fine grid, hence each task's accuracy curve (:func:`predicted_accuracy`) and any
objective built from accuracies, feasibility included (:mod:`paint.selection.margin_search`).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

from paint.errors import PaintError

MARGIN = "margin"  # the field of an evaluation record (and of a task's metrics) that holds the margins


def image_margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Logit of the true class minus the largest other logit, per row of ``logits`` (N, C).

    Example:
        >>> image_margins(np.array([[2.0, 0.5], [0.0, 1.0]]), np.array([0, 0])).tolist()
        [1.5, -1.0]
    """
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.shape[0] == 0:
        return np.zeros(0)
    rows = np.arange(len(y))
    true = x[rows, y]
    other = x.copy()
    other[rows, y] = -np.inf
    return true - other.max(axis=1) if x.shape[1] > 1 else np.full(len(y), np.inf)


def encode_margins(margins: np.ndarray, correct: np.ndarray) -> str:
    """Margins as base64 float16, their signs made to agree with ``correct`` (rounding and argmax ties).

    A correct image keeps a margin > 0 and a wrong one a margin <= 0, exactly as the record's
    ``correct`` bits say, so a count from the stored margins equals the stored accuracy.

    Example:
        >>> decode_margins(encode_margins(np.array([0.5, -2.0, 0.0]), np.array([True, False, True])), 3).tolist()
        [0.5, -2.0, 5.960464477539063e-08]
    """
    m = np.clip(np.nan_to_num(np.asarray(margins, dtype=np.float64)), -6e4, 6e4).astype(np.float16)
    ok = np.asarray(correct, dtype=bool)
    tiny = np.float16(np.finfo(np.float16).smallest_subnormal)
    m = np.where(ok & (m <= 0), tiny, m)
    m = np.where(~ok & (m > 0), np.float16(0.0), m).astype("<f2")
    return base64.b64encode(m.tobytes()).decode("ascii")


def decode_margins(code: str, n: int) -> np.ndarray:
    """The float margins :func:`encode_margins` wrote for ``n`` images."""
    raw = base64.b64decode(code.encode("ascii"))
    if len(raw) != 2 * n:
        raise PaintError(f"a record's per-image margins hold {len(raw) // 2} values, not {n} images")
    return np.frombuffer(raw, dtype="<f2").astype(np.float64)


def task_margins(metrics: dict, task: str) -> np.ndarray | None:
    """One task's decoded margins from an evaluation's metrics, or None when its record has none."""
    m = metrics.get(task, {})
    code = m.get(MARGIN)
    return None if code is None or "n" not in m else decode_margins(str(code), int(m["n"]))


def predict_margins(alphas: Sequence[float], margins: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Every image's margin on ``grid``, interpolated from its margins at the evaluated ``alphas``.

    ``margins`` is (K, N): K distinct evaluated alphas (any order) by N images. Per image, the
    cubic spline through its K margins with not-a-knot ends (scipy's ``CubicSpline``, vectorised
    over the images): a margin is a smooth function of alpha, and this spline reproduces any cubic
    exactly (with three knots, the parabola through them: a support margin that starts flat and
    falls as alpha squared). Two knots give the straight line, one a constant; alphas outside the
    evaluated range are extrapolated by the end pieces. Returns (len(grid), N).
    """
    from scipy.interpolate import CubicSpline  # scipy is a dependency; imported where used, as in strategies

    a = np.asarray(alphas, dtype=np.float64)
    order = np.argsort(a)
    a, y = a[order], np.asarray(margins, dtype=np.float64)[order]
    g = np.asarray(grid, dtype=np.float64)
    if len(a) == 1:
        return np.repeat(y[:1], len(g), axis=0)
    return CubicSpline(a, y, axis=0, bc_type="not-a-knot")(g)


def predicted_accuracy(alphas: Sequence[float], margins: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A task's predicted accuracy on ``grid``: the share of images whose interpolated margin is positive."""
    return (predict_margins(alphas, margins, grid) > 0).mean(axis=1)

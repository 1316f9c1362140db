"""paint.stats: every interval and paired difference against scipy on known cases, and the support margin."""

from __future__ import annotations

import math

import numpy as np
import pytest

from paint.errors import PaintError
from paint.stats import (
    decode_correct,
    encode_correct,
    image_interval,
    paired_difference,
    paired_drop_lower,
    seed_interval,
    wilson_interval,
)


@pytest.mark.parametrize("values", [[80.0, 82.0, 84.0], [1.0, 2.0], [0.3, 0.31, 0.29, 0.35, 0.2]])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_seed_interval_matches_scipy_t_interval(values, confidence):
    from scipy import stats

    iv = seed_interval(values, confidence)
    low, high = stats.t.interval(confidence, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert iv.mean == pytest.approx(np.mean(values))
    assert (iv.low, iv.high) == (pytest.approx(low), pytest.approx(high))
    assert iv.std == pytest.approx(np.std(values, ddof=1)) and iv.n == len(values)


def test_seed_interval_of_one_value_has_no_spread_and_bad_input_is_refused():
    iv = seed_interval([71.5])
    assert iv.mean == 71.5 and math.isnan(iv.low) and math.isnan(iv.half)
    assert iv.record()["low"] is None  # JSON-ready: nan is written as null, not as a number
    with pytest.raises(PaintError, match="at least one value"):
        seed_interval([])
    with pytest.raises(PaintError, match="finite values"):
        seed_interval([1.0, float("nan")])
    with pytest.raises(PaintError, match="confidence must be between 0 and 1"):
        seed_interval([1.0, 2.0], confidence=95)


@pytest.mark.parametrize(("k", "n"), [(900, 1000), (3, 10), (0, 50), (50, 50)])
def test_wilson_interval_matches_scipy(k, n):
    from scipy import stats

    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    iv = wilson_interval(k / n, n)
    assert (iv.low, iv.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    with pytest.raises(PaintError, match="at least one image"):
        wilson_interval(0.5, 0)
    with pytest.raises(PaintError, match=r"fraction in \[0, 1\]"):
        wilson_interval(55.0, 100)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_per_image_correctness_round_trips_in_one_bit_per_image(n):
    bits = np.random.default_rng(n).random(n) < 0.5
    code = encode_correct(bits)
    assert len(code) <= 4 * ((n + 7) // 8 + 2) // 3 + 4
    assert decode_correct(code, n).tolist() == bits.tolist()
    with pytest.raises(PaintError, match="bits, not"):
        decode_correct(code, n + 8)


def _bits(rng, n, p):
    return rng.random(n) < p


def test_image_interval_matches_scipy_percentile_bootstrap_over_two_tasks():
    from scipy import stats

    rng = np.random.default_rng(0)
    x, y = _bits(rng, 600, 0.8), _bits(rng, 400, 0.55)
    iv = image_interval([[x, y]], samples=4000)
    ref = stats.bootstrap(
        (x.astype(float), y.astype(float)),
        lambda a, b, axis: (a.mean(axis=axis) + b.mean(axis=axis)) / 2,
        paired=False,
        n_resamples=4000,
        method="percentile",
        random_state=1,
    ).confidence_interval
    assert iv.mean == pytest.approx(100 * (x.mean() + y.mean()) / 2)
    assert iv.low == pytest.approx(100 * ref.low, abs=0.3) and iv.high == pytest.approx(100 * ref.high, abs=0.3)


def test_paired_difference_on_one_seed_is_scipy_paired_bootstrap():
    from scipy import stats

    rng = np.random.default_rng(1)
    a = _bits(rng, 1000, 0.8)
    b = np.where(rng.random(1000) < 0.1, ~a, a)  # B differs from A on about 10% of the images
    d = paired_difference([[a]], [[b]], samples=4000)
    ref = stats.bootstrap(
        (a.astype(float), b.astype(float)),
        lambda u, v, axis: u.mean(axis=axis) - v.mean(axis=axis),
        paired=True,
        n_resamples=4000,
        method="percentile",
        random_state=2,
    ).confidence_interval
    assert d.mean == pytest.approx(100 * (a.mean() - b.mean()))
    assert d.image_half == pytest.approx(100 * (ref.high - ref.low) / 2, rel=0.1)
    assert math.isnan(d.seed_half) and d.seeds == 1  # one seed: the interval is the test images' alone
    assert d.low == pytest.approx(d.mean - d.image_half) and d.high == pytest.approx(d.mean + d.image_half)


def test_paired_difference_adds_the_seeds_t_interval_from_three_seeds():
    from scipy import stats

    rng = np.random.default_rng(2)
    base = [_bits(rng, 800, 0.6) for _ in range(4)]
    a = [[np.where(rng.random(800) < 0.15 + 0.05 * s, True, x)] for s, x in enumerate(base)]
    b = [[x] for x in base]
    d = paired_difference(a, b)
    per_seed = [100 * (sa[0].mean() - sb[0].mean()) for sa, sb in zip(a, b)]
    ci = stats.ttest_1samp(per_seed, 0.0).confidence_interval(0.95)
    assert d.mean == pytest.approx(np.mean(per_seed))
    assert d.seed_half == pytest.approx((ci.high - ci.low) / 2)
    assert d.high - d.mean == pytest.approx(math.hypot(d.seed_half, d.image_half))
    assert d.established and d.low > 0  # A is right wherever B is, and on 15-30% more images
    two = paired_difference(a[:2], b[:2])
    assert math.isnan(two.seed_half)  # below 3 seeds the spread over seeds is not estimated


def test_a_method_against_itself_is_not_established_and_mismatches_are_refused():
    rng = np.random.default_rng(3)
    a = [[_bits(rng, 300, 0.7)] for _ in range(3)]
    d = paired_difference(a, a)
    assert d.mean == 0.0 and not d.established and d.low <= 0.0 <= d.high
    with pytest.raises(PaintError, match="the same seeds"):
        paired_difference(a, a[:2])
    with pytest.raises(PaintError, match="same test images"):
        paired_difference([[a[0][0]]], [[a[0][0][:100]]])
    with pytest.raises(PaintError, match="at least 100 samples"):
        image_interval(a, samples=10)


def test_paired_drop_lower_is_the_one_sided_normal_bound_of_the_paired_change():
    from scipy import stats

    rng = np.random.default_rng(4)
    before = [_bits(rng, 1200, 0.9), _bits(rng, 800, 0.95)]
    after = [np.where(rng.random(x.size) < 0.04, ~x, x) for x in before]
    lower = paired_drop_lower(after, before, 0.95)
    diffs = [a.astype(float) - b.astype(float) for a, b in zip(after, before)]
    mean = np.mean([d.mean() for d in diffs])
    se = math.sqrt(sum(d.var(ddof=1) / d.size for d in diffs)) / 2
    assert lower == pytest.approx(mean - stats.norm.ppf(0.95) * se)
    one = paired_drop_lower(after[:1], before[:1], 0.95)
    t_low = stats.ttest_1samp(diffs[0], 0.0, alternative="greater").confidence_interval(0.95).low
    assert one == pytest.approx(t_low, abs=2e-4)  # z and t agree at 1,200 images


def test_bound_confidence_holds_the_lower_bound_of_the_support_change():
    from paint.selection.objectives import make_objective

    n = 1000
    ref_bits = np.ones(n, bool)
    ref = {"p": {"accuracy": 0.5}, "s": {"accuracy": 1.0, "n": n, "correct": encode_correct(ref_bits)}}

    def at(drop_images: int) -> dict:
        bits = ref_bits.copy()
        bits[:drop_images] = False
        return {"p": {"accuracy": 0.9}, "s": {"accuracy": bits.mean(), "n": n, "correct": encode_correct(bits)}}

    point = make_objective("constrained", ["p"], ["s"], epsilon=1.0)
    margin = make_objective("constrained", ["p"], ["s"], epsilon=1.0, confidence=0.95)
    assert point.feasible(at(9), ref) and not margin.feasible(at(9), ref)  # -0.9 pt, but its bound is -1.4
    assert point.feasible(at(4), ref) and margin.feasible(at(4), ref)  # -0.4 pt, bound -0.73
    with pytest.raises(PaintError, match="needs per-image results"):
        margin.feasible({"p": {"accuracy": 0.9}, "s": {"accuracy": 0.99}}, ref)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"objective": "mean_accuracy"}, "bound_confidence needs objective 'constrained'"),
        ({"strategy": "blockwise"}, "which strategy 'blockwise' does not keep"),
        ({"bound_confidence": 1.5}, "less than 1"),
    ],
)
def test_bound_confidence_settings_are_checked(settings, message):
    from pydantic import ValidationError

    from paint.selection.config import SelectionConfig

    with pytest.raises(ValidationError, match=message):
        SelectionConfig(**{"bound_confidence": 0.95, **settings})

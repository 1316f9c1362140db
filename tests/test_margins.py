"""Per-image margins: their records, their interpolation along the line, and the search that predicts from them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from paint.evaluation.results import MemoryStore, ResultKey, ResultsStore, metrics_from_logits
from paint.selection import Evaluator, SelectionConfig, evaluator_for, make_objective, run_search
from paint.selection.margin_search import longest_run, margin_search, next_alpha
from paint.selection.margins import (
    decode_margins,
    encode_margins,
    image_margins,
    predict_margins,
    predicted_accuracy,
)
from paint.selection.surrogate import edge_search
from paint.stats import decode_correct, encode_correct

GRID101 = [round(i / 100, 10) for i in range(101)]


def test_margins_agree_with_correctness_and_round_trip_as_float16():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 7, generator=g) * 20
    logits[0] = torch.tensor([1.0, 1.0, 0, 0, 0, 0, 0])  # a tie: argmax takes class 0, the margin is 0
    labels = torch.randint(0, 7, (300,), generator=g)
    labels[0] = 0
    m = metrics_from_logits(logits, labels)
    margins = decode_margins(m["margin"], m["n"])
    correct = decode_correct(m["correct"], m["n"])
    assert ((margins > 0) == correct).all()  # the stored signs are the stored correctness, ties included
    exact = image_margins(logits.numpy(), labels.numpy())
    assert np.allclose(margins[1:], exact[1:], rtol=1e-3, atol=1e-2)
    assert len(m["margin"]) == 4 * -(-2 * 300 // 3)  # base64 of 2 bytes per image
    with pytest.raises(Exception, match="not 299 images"):
        decode_margins(m["margin"], 299)


def test_spline_reproduces_the_knots_a_straight_line_and_a_cubic_exactly():
    a = [0.0, 0.3, 1.0]
    y = np.array([[1.0, -2.0], [0.4, -0.5], [-1.0, 3.0]])
    assert np.allclose(predict_margins(a, y, np.array([1.0, 0.0, 0.3])), y[[2, 0, 1]])
    lin = np.array([[2.0], [2.0 - 0.4 * 3]])  # two knots: the straight line (slope -3)
    assert np.allclose(predict_margins([0.0, 0.4], lin, np.array([0.2, 1.0])).ravel(), [1.4, -1.0])
    grid = np.linspace(0, 1, 101)
    knots = [0.0, 0.2, 0.7, 1.0, 0.5]  # any order

    def cubic(x):
        return 1 - 3 * np.asarray(x) ** 2 + 2.5 * np.asarray(x) ** 3

    assert np.allclose(predict_margins(knots, cubic(knots)[:, None], grid).ravel(), cubic(grid))


def test_margin_interpolation_predicts_a_known_accuracy_curve():
    """Images whose margins are smooth in alpha: 5 evaluations predict the 101-point accuracy curve."""
    rng = np.random.default_rng(0)
    n = 2000
    c0, c1, c2 = rng.normal(0.5, 1, n), rng.normal(0, 2, n), rng.normal(-1, 1.5, n)
    grid = np.array(GRID101)
    knots = [0.0, 0.25, 0.5, 0.75, 1.0]
    idx = [0, 25, 50, 75, 100]
    for margins, images_off in (
        (lambda a: c0 + c1 * a + c2 * a**2, 0),  # quadratic: the spline is exact
        (lambda a: c0 + c1 * np.sin(2 * a) + c2 * (1 - np.exp(-3 * a)), 6),  # smooth, not a polynomial: 0.3% off
    ):
        truth = (margins(grid[:, None]) > 0).mean(axis=1)
        pred = predicted_accuracy(knots, np.stack([margins(a) for a in knots]), grid)
        assert np.abs(pred - truth).max() * n <= images_off
        assert np.array_equal(pred[idx], truth[idx])  # exact where measured


# ----------------------------------------------------------------------------- a synthetic line of images


class ImageLine:
    """Tasks of images whose margins are smooth functions of alpha: a measure with per-image records."""

    def __init__(self, seed: int, steep: bool = False):
        rng = np.random.default_rng(seed)
        self.steep = steep  # patching margins that grow as sqrt(alpha): infinitely steep at 0, not smooth there
        self.tasks = {}
        # the patching task gains with alpha and saturates; its images cross zero between 0 and ~0.7
        n = 300
        start, gain = rng.normal(-0.5, 1.5, n), rng.gamma(2.0, 1.5, n)
        self.tasks["p"] = (start, gain, np.zeros(n), "patch")
        # support tasks lose with alpha, flat at first (a quadratic start), some more than others
        for i, (n, loss) in enumerate(((500, 1.2), (400, 0.6), (600, 2.0))):
            start = rng.gamma(3.0, 1.0, n) - 0.3
            curv = rng.gamma(1.5, loss, n) * rng.choice([1.0, -0.2], size=n, p=[0.9, 0.1])
            self.tasks[f"s{i}"] = (start, np.zeros(n), curv, "support")

    def margins(self, task: str, alpha: float) -> np.ndarray:
        start, gain, curv, _ = self.tasks[task]
        rise = np.sqrt(alpha) if self.steep else 1 - np.exp(-3 * alpha)
        return start + gain * rise * 2 - curv * alpha**2 * 1.2

    def measure(self, alpha: float, grad: bool) -> dict:
        out = {}
        for t in self.tasks:
            m = self.margins(t, alpha)
            ok = m > 0
            out[t] = {
                "accuracy": int(ok.sum()) / len(m),
                "loss": 0.0,
                "n": len(m),
                "correct": encode_correct(ok),
                "margin": encode_margins(m, ok),
            }
        return out

    def names(self, role: str) -> list[str]:
        return [t for t, v in self.tasks.items() if v[3] == role]


def grid_best(line: ImageLine, objective: str, constraint: str) -> float:
    cfg = SelectionConfig(strategy="grid", alphas=GRID101, objective=objective, constraint=constraint)
    ev = evaluator_for(cfg, line.measure, line.names("patch"), line.names("support"))
    return run_search(ev, cfg).value


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("objective", "constraint"), [("constrained", "each"), ("constrained", "mean"), ("mean_accuracy", "mean")]
)
def test_surrogate_reaches_the_grid_optimum_within_6_evaluations_from_margins(seed, objective, constraint):
    line = ImageLine(seed)
    ref = grid_best(line, objective, constraint)
    cfg = SelectionConfig(strategy="surrogate", objective=objective, constraint=constraint, budget=6)
    res = run_search(evaluator_for(cfg, line.measure, line.names("patch"), line.names("support")), cfg)
    assert res.n_model_evals <= 6
    assert (res.value - ref) / abs(ref) <= 1e-3, (res.value, ref, [e.alpha for e in res.evaluations])
    assert any(e.alpha == res.alpha for e in res.evaluations)  # the answer is an evaluated alpha


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("constraint", ["each", "mean"])
def test_a_prediction_that_did_not_hold_is_checked_before_stopping(seed, constraint):
    """Margins steep at 0 mislead the first predictions; the search does not stop on one that failed."""
    line = ImageLine(seed, steep=True)
    ref = grid_best(line, "constrained", constraint)
    cfg = SelectionConfig(strategy="surrogate", objective="constrained", constraint=constraint, budget=11)
    res = run_search(evaluator_for(cfg, line.measure, line.names("patch"), line.names("support")), cfg)
    assert (res.value - ref) / abs(ref) <= 1e-3 and res.n_model_evals <= 7, [e.alpha for e in res.evaluations]


def test_margin_search_stops_once_the_predicted_optimum_is_measured():
    line = ImageLine(0)
    cfg = SelectionConfig(strategy="surrogate", objective="constrained", constraint="each", budget=30)
    res = run_search(evaluator_for(cfg, line.measure, line.names("patch"), line.names("support")), cfg)
    assert res.stopped == "converged" and res.n_model_evals < 30


def test_without_margins_surrogate_searches_exactly_as_before():
    """Records without margins (older results files): the surrogate's power-law edge search, evaluation for evaluation."""
    line = ImageLine(1)

    def bare(alpha: float, grad: bool) -> dict:
        return {t: {k: v for k, v in m.items() if k != "margin"} for t, m in line.measure(alpha, grad).items()}

    obj = make_objective("constrained", line.names("patch"), line.names("support"), 1.0, "each")
    ev = Evaluator(bare, obj, 11)
    assert margin_search(ev, 1e-3) is False and [e.alpha for e in ev.evaluations] == [0.0]
    direct = Evaluator(bare, obj, 11)
    edge_search(direct, 1e-3)
    cfg = SelectionConfig(strategy="surrogate", objective="constrained", constraint="each", budget=11)
    res = run_search(evaluator_for(cfg, bare, line.names("patch"), line.names("support")), cfg)
    assert [e.alpha for e in res.evaluations] == [e.alpha for e in direct.evaluations]


def test_next_alpha_aims_at_the_middle_of_the_predicted_best_stretch():
    grid = np.round(np.linspace(0, 1, 11), 10)
    values = np.array([0, -1, -2, -3, -3, -3, -3, -1, 5, 5, 5], dtype=float)
    assert longest_run(values <= -3) == (3, 6)
    assert next_alpha(values, grid, [0.0, 1.0], best=0.0, xtol=1e-3) == 0.4
    assert next_alpha(values, grid, [0.0, 0.4, 1.0], best=0.0, xtol=1e-3) in (0.3, 0.5, 0.6)
    assert next_alpha(values, grid, [0.0, 1.0], best=-3.0, xtol=1e-3) is None  # nothing predicted to beat it
    assert next_alpha(values, grid, [0.0, 1.0], best=-3.0, xtol=1e-3, improve=False) == 0.4  # checked anyway
    assert next_alpha(values, grid, list(grid), best=-9.0, xtol=1e-3, improve=False) is None  # all measured


def test_old_records_without_margins_load_and_are_not_measured_again(tmp_path, tiny_clip_dir):
    from paint.models.clip import load_clip
    from paint.pipeline.pool import Line, PoolTask, TaskPool

    bundle = load_clip(str(tiny_clip_dir))
    g = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 256, (12, 3, 16, 16), generator=g, dtype=torch.uint8)
    head = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1) * 10
    task = PoolTask("p", "patch", ("a", "b", "c"), ("{}",), {"val": imgs}, {"val": np.arange(12) % 3}, {}, head, {})
    zs = {k: v.clone() for k, v in bundle.image_tower_state().items()}
    ft = {k: v + 0.05 if v.is_floating_point() else v for k, v in zs.items()}
    line = Line.between(zs, ft)
    old = {"accuracy": 0.25, "loss": 1.5, "n": 12, "correct": encode_correct(np.arange(12) < 3)}
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"model": line.id, "alpha": 0.5, "task": "p", "split": "val", **old}) + "\n")
    pool = TaskPool(bundle.model, bundle.spec, [task], ResultsStore(path), 8)
    got = pool.measure(line)(0.5, False)["p"]
    assert got == old  # read back as written: no margin, and not measured again
    fresh = pool.measure(line)(0.25, False)["p"]
    assert ((decode_margins(fresh["margin"], 12) > 0) == decode_correct(fresh["correct"], 12)).all()
    assert "margin" not in pool.evaluate_line(line, 0.25, "val")["p"]  # only the search's measure carries them
    assert ResultsStore(path).get(ResultKey(line.id, 0.25, "p", "val"))["margin"] == fresh["margin"]
    assert MemoryStore().get(ResultKey(line.id, 0.25, "p", "val")) is None


def test_margin_search_holds_the_confidence_bound_from_predicted_per_image_results():
    line = ImageLine(2)
    cfg = SelectionConfig(
        strategy="surrogate", objective="constrained", constraint="mean", budget=8, bound_confidence=0.9
    )
    grid = SelectionConfig(strategy="grid", alphas=GRID101, constraint="mean", bound_confidence=0.9)
    res = run_search(evaluator_for(cfg, line.measure, line.names("patch"), line.names("support")), cfg)
    ref = run_search(evaluator_for(grid, line.measure, line.names("patch"), line.names("support")), grid)
    assert res.feasible and res.value <= ref.value + 1e-3 * abs(ref.value)


def test_each_bound_finds_the_second_piece_of_a_feasible_set_in_two_pieces():
    """One support image is lost on (0.40, 0.43) only: feasible [0, 0.40] and again [0.43, 0.465]."""
    t = np.linspace(0.005, 0.995, 200)  # the patching images, right once alpha passes their t
    support = [
        lambda a: 40 * (a - 0.40) * (a - 0.43),  # wrong on (0.40, 0.43) only
        lambda a: 0.2 - a,  # wrong from 0.2 on: the one image the bound allows
        lambda a: 0.465 - a,  # wrong from 0.465 on
    ]

    def measure(alpha: float, grad: bool) -> dict:
        out = {}
        for name, m in (
            ("p", alpha - t),
            ("s", np.r_[[f(alpha) for f in support], np.full(97, 5.0)]),
        ):
            ok = m > 0
            out[name] = {"accuracy": int(ok.sum()) / len(m), "n": len(m), "margin": encode_margins(m, ok)}
        return out

    grid = SelectionConfig(strategy="grid", alphas=GRID101, constraint="each")
    best = run_search(evaluator_for(grid, measure, ["p"], ["s"]), grid)
    assert best.alpha == 0.46
    cfg = SelectionConfig(strategy="surrogate", constraint="each", budget=6)
    res = run_search(evaluator_for(cfg, measure, ["p"], ["s"]), cfg)
    assert 0.43 <= res.alpha < 0.465 and res.value <= best.value and res.n_model_evals <= 5

"""Coefficient search: objectives, strategies, budgets, and the exact line derivative."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paint.config import parse_config
from paint.errors import PaintError
from paint.selection import (
    STRATEGIES,
    Constrained,
    Evaluator,
    LossSum,
    MeanAccuracy,
    SelectionConfig,
    TaskGroups,
    bracket_of,
    function_evaluator,
    polynomial_minimum,
    run_search,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Three quasi-convex curves with known minimisers (and their derivatives).
CURVES = {
    "smooth": (lambda a: 1 + 2 * (a - 0.37) ** 2, lambda a: 4 * (a - 0.37), 0.37),
    "skewed": (lambda a: math.exp(-10 * a) + a, lambda a: 1 - 10 * math.exp(-10 * a), math.log(10) / 10),
    "flat": (
        lambda a: 0.5 + max(0.0, abs(a - 0.6) - 0.15) ** 2,
        lambda a: 2 * max(0.0, abs(a - 0.6) - 0.15) * (1 if a > 0.6 else -1),
        0.6,
    ),
}


@pytest.mark.parametrize("curve", sorted(CURVES))
@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES) - {"boundary"}))
@pytest.mark.parametrize("budget", [6, 11])
def test_strategies_find_known_minimum_within_budget(curve, strategy, budget):
    f, df, amin = CURVES[curve]
    ev = function_evaluator(f, df, budget=budget)
    res = run_search(ev, SelectionConfig(strategy=strategy, objective="loss_sum", budget=budget))
    assert res.n_model_evals <= budget
    assert len(res.evaluations) == res.n_model_evals  # every measurement is recorded, none twice
    assert res.value == min(e.value for e in res.evaluations)
    # The 11-point grid is within 0.05 of any minimiser; the adaptive ones do better than 2%.
    tol = 0.016 if strategy == "grid" else 0.006
    assert (res.value - f(amin)) / f(amin) <= tol
    if curve == "smooth" and strategy != "grid":
        assert abs(res.alpha - amin) < 0.01


@pytest.mark.parametrize("strategy", ["bounded", "quasiconvex", "derivative", "surrogate"])
def test_adaptive_strategies_with_6_beat_grid_with_11(strategy):
    for curve, (f, df, _) in CURVES.items():
        grid = run_search(
            function_evaluator(f, df, 11), SelectionConfig(strategy="grid", budget=11, objective="loss_sum")
        )
        res = run_search(
            function_evaluator(f, df, 6), SelectionConfig(strategy=strategy, budget=6, objective="loss_sum")
        )
        assert res.value <= grid.value + 1e-12, (curve, res.value, grid.value)


def test_minimum_at_the_ends_is_found():
    for f, df, amin in [
        (lambda a: (a - 1.2) ** 2, lambda a: 2 * (a - 1.2), 1.0),
        (lambda a: a + 1, lambda a: 1.0, 0.0),
    ]:
        for strategy in set(STRATEGIES) - {"boundary"}:
            res = run_search(
                function_evaluator(f, df, 11), SelectionConfig(strategy=strategy, budget=11, objective="loss_sum")
            )
            assert abs(res.alpha - amin) < 0.01, strategy


def test_boundary_bisects_to_the_largest_feasible_alpha():
    # Support accuracy falls linearly from 0.9 to 0.5; with epsilon 5 points the edge is alpha 0.125.
    def measure(alpha, grad):
        return {"p": {"accuracy": 0.3 + 0.6 * alpha, "loss": 1.0}, "s": {"accuracy": 0.9 - 0.4 * alpha, "loss": 1.0}}

    for budget, tol in ((6, 1 / 16), (11, 1 / 512)):
        cfg = SelectionConfig(
            strategy="boundary", objective="constrained", epsilon=5.0, budget=budget, constraint="each"
        )
        from paint.selection import evaluator_for

        res = run_search(evaluator_for(cfg, measure, ["p"], ["s"]), cfg)
        assert res.feasible and res.n_model_evals <= budget
        assert 0.125 - tol <= res.alpha <= 0.125
    with pytest.raises(PaintError, match="boundary"):
        parse_config(SelectionConfig, {"strategy": "boundary", "objective": "loss_sum"})


def test_cubic_minimiser_is_exact_on_a_cubic():
    from paint.selection.surrogate import cubic_minimiser

    # f = (a - 0.3)^2 (a + 1): f' = (a - 0.3)(3a + 1.7), local minimum at 0.3
    def f(a):
        return (a - 0.3) ** 2 * (a + 1)

    def df(a):
        return (a - 0.3) * (3 * a + 1.7)

    assert cubic_minimiser(0.0, f(0.0), df(0.0), 1.0, f(1.0), df(1.0)) == pytest.approx(0.3, abs=1e-12)
    assert cubic_minimiser(0.1, f(0.1), df(0.1), 0.9, f(0.9), df(0.9)) == pytest.approx(0.3, abs=1e-12)
    # a quadratic is a cubic too (the cubic term vanishes)
    assert cubic_minimiser(0.0, 0.37**2, -0.74, 1.0, 0.63**2, 1.26) == pytest.approx(0.37, abs=1e-12)


def test_surrogate_uses_the_derivative_and_needs_3_evaluations_on_a_quadratic():
    f, df, amin = CURVES["smooth"]
    res = run_search(
        function_evaluator(f, df, 3), SelectionConfig(strategy="surrogate", budget=3, objective="loss_sum")
    )
    assert res.alpha == pytest.approx(amin, abs=1e-9)
    assert [e.alpha for e in res.evaluations][:2] == [0.0, 1.0] and all(
        e.derivative is not None for e in res.evaluations
    )


def test_edge_root_is_exact_on_a_power_law():
    from paint.selection.surrogate import edge_root

    law = [(a, 8.0 * a**2.5) for a in (0.0, 0.5, 1.0)]
    level = 1.0
    edge = (level / 8.0) ** (1 / 2.5)
    assert edge_root(law, level, 0.0, 0.5) == pytest.approx(edge)  # two points above: their exponent
    law = [(0.0, 0.0), (0.3, 8.0 * 0.3**2.5), (1.0, 8.0)]
    assert edge_root(law, level, 0.3, 1.0) == pytest.approx(edge)  # one each side
    assert edge_root([(0.0, 0.0), (1.0, 4.0)], level, 0.0, 1.0) == pytest.approx(0.5)  # the prior: quadratic


def _edge_measure(scale, power, n=None):
    """Patching accuracy rises with alpha; support falls by scale * alpha^power (accuracy, fractions)."""

    def measure(alpha, grad):
        s = 0.9 - scale * alpha**power
        if n is not None:
            s = round(s * n) / n  # whole images
        m = {"p": {"accuracy": 0.3 + 0.6 * alpha, "loss": 1.0}, "s": {"accuracy": s, "loss": 1.0}}
        if n is not None:
            m["s"]["n"] = n
        return m

    return measure


@pytest.mark.parametrize(("scale", "power"), [(0.4, 1.0), (0.08, 2.0), (0.2, 3.0), (0.05, 1.5)])
def test_surrogate_finds_the_support_edge_in_fewer_evaluations_than_bisection(scale, power):
    from paint.selection import evaluator_for

    edge = (0.01 / scale) ** (1 / power)  # where the support drop reaches epsilon = 1 point
    found = {}
    for strategy in ("surrogate", "boundary"):
        for budget in range(3, 16):
            cfg = SelectionConfig(strategy=strategy, objective="constrained", epsilon=1.0, budget=budget)
            res = run_search(evaluator_for(cfg, _edge_measure(scale, power), ["p"], ["s"]), cfg)
            assert res.feasible and res.alpha <= edge + 1e-9
            if edge - res.alpha <= 0.005:
                found[strategy] = res.n_model_evals
                break
    assert found["surrogate"] <= 6 and found["surrogate"] < found["boundary"], found


def test_surrogate_edge_search_crosses_a_flat_stretch_of_whole_images():
    """A drop that moves in whole images sits on the bound for a while; the search still reaches its end."""
    from paint.selection import evaluator_for

    measure = _edge_measure(0.2, 2.0, n=50)  # one image = 2 points: the bound (1 point) holds until 2 points
    cfg = SelectionConfig(strategy="surrogate", objective="constrained", epsilon=1.0, budget=11)
    res = run_search(evaluator_for(cfg, measure, ["p"], ["s"]), cfg)
    last = max(a / 1000 for a in range(1001) if round((0.9 - 0.2 * (a / 1000) ** 2) * 50) / 50 >= 0.89 - 1e-12)
    assert res.feasible and last - 0.01 <= res.alpha <= last


def test_constrained_margins_agree_with_feasibility():
    groups = TaskGroups(patch=("p",), support=("s1", "s2"))
    ref = {"p": {"accuracy": 0.3}, "s1": {"accuracy": 0.9}, "s2": {"accuracy": 0.8}}
    m = {"p": {"accuracy": 0.7}, "s1": {"accuracy": 0.895}, "s2": {"accuracy": 0.78}}
    each, mean = Constrained(groups, 1.0, "each"), Constrained(groups, 1.0, "mean")
    assert each.margins(m, ref) == pytest.approx([0.005, -0.01])
    assert mean.margins(m, ref) == pytest.approx([-0.0025])
    assert not each.feasible(m, ref) and not mean.feasible(m, ref)
    assert Constrained(groups, 3.0, "each").margins(m, ref) == pytest.approx([0.025, 0.01])
    assert Constrained(TaskGroups(("p",)), 1.0).margins(m, ref) == []


def test_evaluator_caches_and_enforces_budget():
    calls = []

    def f(a):
        calls.append(a)
        return (a - 0.5) ** 2

    ev = function_evaluator(f, budget=2)
    ev(0.3)
    ev(0.1 + 0.2)  # the same alpha up to rounding: no new measurement
    ev(0.5)
    assert calls == [0.3, 0.5] and ev.n_model_evals == 2
    from paint.selection import BudgetExhausted

    with pytest.raises(BudgetExhausted):
        ev(0.7)
    with pytest.raises(PaintError, match=r"alpha 1.5 is outside \[0, 1\]"):
        ev(1.5)


def test_grid_stops_at_budget_and_keeps_order():
    ev = function_evaluator(lambda a: -a, budget=4)
    res = run_search(ev, SelectionConfig(strategy="grid", budget=4, objective="loss_sum"))
    assert [e.alpha for e in res.evaluations] == [0.0, 0.1, 0.2, 0.3]
    assert res.stopped == "budget" and res.alpha == 0.3


def test_config_validation_is_one_line_error():
    with pytest.raises(PaintError, match="derivative"):
        parse_config(SelectionConfig, {"strategy": "derivative", "objective": "constrained"})
    with pytest.raises(PaintError, match="alpha 1.5 is outside"):
        parse_config(SelectionConfig, {"alphas": [0.0, 1.5]})
    with pytest.raises(PaintError, match="unknown field"):
        parse_config(SelectionConfig, {"stratgy": "grid"})
    cfg = parse_config(SelectionConfig, {"strategy": "quasiconvex", "budget": 6, "objective": "loss_sum"})
    assert cfg.points()[0] == 0.0 and len(cfg.points()) == 11 and cfg.max_evals() == 6


def test_objective_values_by_hand():
    groups = TaskGroups(patch=("p",), support=("s1", "s2"))
    ref = {
        "p": {"accuracy": 0.3, "loss": 2.0},
        "s1": {"accuracy": 0.9, "loss": 0.5},
        "s2": {"accuracy": 0.8, "loss": 1.5},
    }
    m = {
        "p": {"accuracy": 0.7, "loss": 1.0, "dloss": -2.0},
        "s1": {"accuracy": 0.895, "loss": 0.6, "dloss": 0.4},
        "s2": {"accuracy": 0.78, "loss": 1.6, "dloss": 0.2},
    }
    # mean: -(0.7 + (0.895 + 0.78) / 2) / 2
    assert MeanAccuracy(groups).value(m, ref) == pytest.approx(-(0.7 + 0.8375) / 2)
    # loss sum: 1/2 + ((0.6 + 1.6)/2) / ((0.5 + 1.5)/2) = 0.5 + 1.1; derivative -2/2 + 0.3/1
    assert LossSum(groups).value(m, ref) == pytest.approx(1.6)
    assert LossSum(groups).derivative(m, ref) == pytest.approx(-1.0 + 0.3)
    # constrained, 1 point: s2 dropped 2 points -> infeasible, violation 0.01
    c1 = Constrained(groups, epsilon=1.0, constraint="each")
    assert not c1.feasible(m, ref) and c1.value(m, ref) == pytest.approx(1.01)
    c3 = Constrained(groups, epsilon=3.0)
    assert c3.feasible(m, ref) and c3.value(m, ref) == pytest.approx(-0.7)


def test_bracket_and_polynomial():
    from paint.selection import Evaluation

    evs = [Evaluation(a, v, None, True) for a, v in [(0.0, 3.0), (0.25, 1.0), (0.5, 1.0), (0.75, 2.0), (1.0, 4.0)]]
    assert bracket_of(evs) == (0.0, 0.75)  # a plateau widens the bracket
    xs = np.linspace(0.1, 0.6, 6)
    ys = (xs - 0.33) ** 2 + 0.1 * (xs - 0.33) ** 3
    assert polynomial_minimum(xs, ys, 0.1, 0.6) == pytest.approx(0.33, abs=1e-6)


def _table_measure(table):
    """A measure reading accuracies from a table of alphas (nearest tabulated alpha)."""
    alphas = np.array(sorted(table))

    def measure(alpha, grad):
        near = float(alphas[np.argmin(np.abs(alphas - alpha))])
        return {t: {"accuracy": acc, "loss": 1.0 - acc} for t, acc in table[near].items()}

    return measure


accuracy = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.tuples(accuracy, accuracy, accuracy), min_size=11, max_size=11),
    epsilon=st.sampled_from([0.0, 1.0, 5.0]),
    strategy=st.sampled_from(["grid", "bounded", "quasiconvex", "boundary", "surrogate"]),
    budget=st.integers(3, 11),
    constraint=st.sampled_from(["each", "mean"]),
)
def test_constrained_never_returns_an_infeasible_alpha(rows, epsilon, strategy, budget, constraint):
    table = {round(i / 10, 1): {"p": r[0], "s1": r[1], "s2": r[2]} for i, r in enumerate(rows)}
    objective = Constrained(TaskGroups(("p",), ("s1", "s2")), epsilon, constraint)
    ev = Evaluator(_table_measure(table), objective, budget)
    res = run_search(ev, SelectionConfig(strategy=strategy, budget=budget, objective="constrained", epsilon=epsilon))
    zs = table[0.0]
    chosen = table[round(min(table, key=lambda a: abs(a - res.alpha)), 1)]
    if any(e.feasible for e in res.evaluations):
        assert res.feasible
        if constraint == "each":
            assert all(chosen[s] >= zs[s] - epsilon / 100 - 1e-12 for s in ("s1", "s2"))
        else:
            assert chosen["s1"] + chosen["s2"] >= zs["s1"] + zs["s2"] - 2 * epsilon / 100 - 1e-12
        # and it is the best feasible patching accuracy among what was evaluated
        best_p = max(e.metrics["p"]["accuracy"] for e in res.evaluations if e.feasible)
        assert chosen["p"] == best_p


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(st.tuples(accuracy, accuracy, accuracy), min_size=11, max_size=11),
    epsilon=st.sampled_from([0.0, 1.0]),
)
def test_grid_search_agrees_with_select_rules(rows, epsilon):
    from paint.selection import evaluator_for, select_alpha

    table = {round(i / 10, 1): {"p": r[0], "s1": r[1], "s2": r[2]} for i, r in enumerate(rows)}
    sweep = [{"alpha": a, "val": accs} for a, accs in table.items()]
    for objective, rule, constraint in (
        ("constrained", "constrained", "each"),
        ("constrained", "constrained", "mean"),
        ("mean_accuracy", "mean", "each"),
    ):
        cfg = SelectionConfig(strategy="grid", objective=objective, epsilon=epsilon, constraint=constraint)
        res = run_search(evaluator_for(cfg, _table_measure(table), ["p"], ["s1", "s2"]), cfg)
        assert res.alpha == select_alpha(sweep, ["p"], ["s1", "s2"], rule, epsilon, constraint)["alpha"]


# ----------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def tiny_line(tiny_clip_dir):
    """A float64 tiny CLIP, two image-tower states on a line, and a small task."""
    from transformers import CLIPModel

    from paint.data.preprocess import ImageSpec
    from paint.evaluation.line import LossData

    model = CLIPModel.from_pretrained(tiny_clip_dir).double().eval()
    theta_zs = {
        k: v.clone() for k, v in model.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))
    }
    g = torch.Generator().manual_seed(0)
    theta_ft = {
        k: (v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype)) if v.is_floating_point() else v.clone()
        for k, v in theta_zs.items()
    }
    images = torch.randint(0, 256, (10, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = np.arange(10) % 3
    head = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1) * 10
    spec = ImageSpec(16, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return model, theta_zs, theta_ft, [LossData(images, labels, head)], spec


def test_line_derivative_matches_central_difference(tiny_line):
    from paint.evaluation.line import line_derivative

    model, zs, ft, data, spec = tiny_line
    for alpha in (0.0, 0.4, 1.0):
        p = line_derivative(model, zs, ft, alpha, data, spec, batch_size=4)  # several batches accumulate
        h = 1e-5
        lp = line_derivative(model, zs, ft, alpha + h, data, spec).loss
        lm = line_derivative(model, zs, ft, alpha - h, data, spec).loss
        fd = (lp - lm) / (2 * h)
        assert p.dloss == pytest.approx(fd, rel=1e-6, abs=1e-9)
        assert abs(p.dloss) > 1e-4  # a real slope, not a trivial zero


def test_line_loss_matches_evaluate_split(tiny_line):
    from paint.evaluation.line import line_derivative, line_point, set_image_tower
    from paint.evaluation.results import evaluate_split

    model, zs, ft, data, spec = tiny_line
    p = line_derivative(model, zs, ft, 0.3, data, spec)
    m32 = model.float()
    try:
        set_image_tower(m32, {k: v.float() for k, v in line_point(zs, ft, 0.3).items()})
        ref = evaluate_split(m32, data[0].head, data[0].images, data[0].labels, spec)
    finally:
        model.double()
    assert p.loss == pytest.approx(ref["loss"], rel=1e-4)
    assert p.accuracy == pytest.approx(ref["accuracy"])


def test_loss_sum_derivative_through_line_measure(tiny_clip_dir):
    """The Evaluator's dObjective/dalpha on a real CLIP line matches a finite difference of its values."""
    from paint.evaluation.results import MemoryStore
    from paint.models.clip import load_clip
    from paint.pipeline.pool import Line, PoolTask, TaskPool

    bundle = load_clip(str(tiny_clip_dir))
    g = torch.Generator().manual_seed(2)
    tasks = []
    for name, role, c in (("p", "patch", 3), ("s", "support", 2)):
        imgs = torch.randint(0, 256, (24, 3, 16, 16), generator=g, dtype=torch.uint8)
        labels = np.arange(24) % c
        head = torch.nn.functional.normalize(torch.randn(c, 16, generator=g), dim=-1) * 10
        tasks.append(
            PoolTask(name, role, tuple("abc"[:c]), ("{}",), {"val": imgs}, {"val": labels}, {"val": name}, head, {})
        )
    zs = {k: v.clone() for k, v in bundle.image_tower_state().items()}
    ft = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in zs.items()}
    measure = TaskPool(bundle.model, bundle.spec, tasks, MemoryStore(), 8).measure(Line.between(zs, ft))
    from paint.selection import evaluator_for

    cfg = SelectionConfig(strategy="derivative", objective="loss_sum", budget=10)
    ev = evaluator_for(cfg, measure, ["p"], ["s"])
    h = 1e-2
    d = ev.derivative(0.5)
    fd = (ev(0.5 + h) - ev(0.5 - h)) / (2 * h)
    assert d == pytest.approx(fd, rel=2e-2, abs=1e-4)
    assert ev(0.0) == pytest.approx(2.0)  # each normalised loss is 1 at the reference
    res = run_search(ev, cfg)
    assert res.n_model_evals <= 10 and res.strategy == "derivative"

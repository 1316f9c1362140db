"""Merge methods against their definitions computed by hand (mergekit's semantics), plus registry and greedy soup."""

from __future__ import annotations

import math

import pytest
import torch

from paint.errors import PaintError
from paint.weights import methods as M
from paint.weights import sparsify as S
from paint.weights.ops import lerp_tensor
from paint.weights.soup import greedy_soup


def _run(name: str, base, models, weights=None, key="w", **params):
    m = M.get_method(name)
    p = m.parse_params(params)
    return m.fn(base, models, weights or [1.0] * len(models), p, key)


@pytest.fixture()
def trio():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 5, generator=g)
    models = [base + torch.randn(4, 5, generator=g) for _ in range(3)]
    return base, models


def test_registry_entries_carry_papers_and_validate_params():
    for name, m in M.METHODS.items():
        assert m.name == name
        assert m.papers and all(p.arxiv.count(".") == 1 and p.title for p in m.papers)
    with pytest.raises(PaintError, match="unknown merge method 'nope'.*ties"):
        M.get_method("nope")
    with pytest.raises(PaintError, match="density"):
        M.get_method("ties").parse_params({"density": 0.0})
    with pytest.raises(PaintError, match="drop_rate"):
        M.get_method("dare_ties").parse_params({"drop_rate": 1.0})
    with pytest.raises(PaintError, match="unknown field"):
        M.get_method("linear").parse_params({"alpha": 0.5})
    with pytest.raises(PaintError, match="at least 2 models"):
        M.check_weights(M.get_method("model_stock"), [1.0])
    with pytest.raises(PaintError, match="does not use per-model weights"):
        M.check_weights(M.get_method("model_stock"), [1.0, 2.0])
    # TIES and DARE are configured instances of one implementation, not copies.
    for name in ("task_arithmetic", "ties", "dare_task_arithmetic", "dare_ties"):
        assert M.METHODS[name].combine.func is M.delta_combine and M.METHODS[name].prepare.func is M.delta_prepare


def test_linear_is_weighted_average(trio):
    base, models = trio
    w = [1.0, 2.0, 3.0]
    expected = sum(wi * m.double() for wi, m in zip(w, models)) / 6.0
    torch.testing.assert_close(_run("linear", base, models, w).double(), expected, atol=1e-6, rtol=0)
    unnormalized = _run("linear", base, models, [0.5, -1.0, 2.0], normalize=False)
    expected = 0.5 * models[0].double() - models[1].double() + 2.0 * models[2].double()
    torch.testing.assert_close(unnormalized.double(), expected, atol=1e-6, rtol=0)
    with pytest.raises(PaintError, match="sum to 0"):
        _run("linear", base, models[:2], [1.0, -1.0])


def test_linear_two_models_is_paint_interpolation_bit_for_bit(trio):
    _, (zs, ft, _) = trio
    for alpha in (0.0, 0.3, 1.0):
        out = _run("linear", zs, [zs, ft], [1 - alpha, alpha])
        assert torch.equal(out, lerp_tensor(zs, ft, alpha))
    assert torch.equal(_run("linear", zs, [zs, ft], [1.0, 0.0]), zs)


def test_task_arithmetic_by_hand_and_zero_coefficient(trio):
    base, models = trio
    c = [1.0, -0.5, 0.25]  # a negative coefficient negates that task
    out = _run("task_arithmetic", base, models, c, scaling=0.7)
    b = base.double()
    expected = b + 0.7 * sum(ci * (m.double() - b) for ci, m in zip(c, models))
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=0)
    # Coefficient 0 (or scaling 0) returns the base exactly, half precision included.
    assert torch.equal(_run("task_arithmetic", base, models[:1], [0.0]), base)
    assert torch.equal(_run("task_arithmetic", base.half(), [m.half() for m in models], scaling=0.0), base.half())


def test_ties_on_a_worked_example():
    base = torch.zeros(4)
    models = [
        torch.tensor([3.0, -1.0, 0.5, -2.0]),
        torch.tensor([-4.0, 2.0, 0.1, 1.0]),
        torch.tensor([1.0, 0.9, -3.0, 0.2]),
    ]
    # density 0.5 keeps 2 of 4: [3, 0, 0, -2], [-4, 2, 0, 0], [1, 0, -3, 0]; summed mass [0, 2, -3, -2]
    # elects signs [+, +, -, -] (a zero mass elects +, as in mergekit); the disjoint means are
    # [(3 + 1) / 2, 2, -3, -2].
    out = _run("ties", base, models, density=0.5, scaling=0.5)
    assert torch.equal(out, torch.tensor([1.0, 1.0, -1.5, -1.0]))
    # Weights other than 1 divide by the summed weights of the agreeing models (mergekit), not their count.
    out = _run("ties", base, models, [1.0, 1.0, 3.0], density=0.5)
    assert out[0].item() == pytest.approx((3.0 + 3.0 * 1.0) / (1.0 + 3.0))
    unnormalized = _run("ties", base, models, [1.0, 1.0, 3.0], density=0.5, normalize=False)
    assert unnormalized[0].item() == pytest.approx(3.0 + 3.0 * 1.0)


def _ties_reference(base, models, weights, density, scaling, normalize=True):
    """TIES written element by element: per-tensor trim to int(density * n), elect by mass, weighted disjoint mean."""
    n = base.numel()
    k = max(1, int(density * n))
    taus = []
    for m in models:
        tau = (m.double() - base.double()).reshape(-1).tolist()
        keep = set(sorted(range(n), key=lambda j: -abs(tau[j]))[:k])
        taus.append([tau[j] if j in keep else 0.0 for j in range(n)])
    out = []
    for j in range(n):
        weighted = [w * t[j] for t, w in zip(taus, weights)]
        sign = 1 if sum(weighted) >= 0 else -1
        agree = [(x, w) for x, w in zip(weighted, weights) if x != 0 and (x > 0) == (sign > 0)]
        total, divisor = sum(x for x, _ in agree), sum(w for _, w in agree)
        merged = total / divisor if normalize and divisor != 0 else total
        out.append(base.reshape(-1)[j].item() + scaling * merged)
    return torch.tensor(out, dtype=torch.float64).reshape(base.shape)


def test_ties_matches_elementwise_definition(trio):
    base, models = trio
    out = _run("ties", base, models, [1.0, 0.5, 2.0], density=0.35, scaling=0.8)
    ref = _ties_reference(base, models, [1.0, 0.5, 2.0], 0.35, 0.8)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)
    out = _run("ties", base, models, [1.0, -0.5, 2.0], density=0.6, normalize=False)
    torch.testing.assert_close(
        out.double(), _ties_reference(base, models, [1.0, -0.5, 2.0], 0.6, 1.0, False), atol=1e-6, rtol=0
    )


def _dare_mask(seed, key, i, shape, p):
    gen = torch.Generator().manual_seed(S.tensor_seed(seed, key, i))
    return torch.bernoulli(torch.full(shape, 1 - p), generator=gen)


@pytest.mark.parametrize("rescale", ["l1", "paper", "none"])
def test_dare_with_fixed_seed_matches_definition(trio, rescale):
    base, models = trio
    p, seed, w = 0.6, 7, [1.0, 2.0, -1.0]
    kw = {"key": "layer.w", "drop_rate": p, "seed": seed, "scaling": 0.5, "rescale": rescale}
    out = _run("dare_task_arithmetic", base, models, w, **kw)
    expected = base.double().clone()
    for i, (m, wi) in enumerate(zip(models, w)):
        tau = m.double() - base.double()
        dropped = tau * _dare_mask(seed, "layer.w", i, base.shape, p)
        scale = {"l1": tau.abs().sum() / dropped.abs().sum(), "paper": 1 / (1 - p), "none": 1.0}[rescale]
        expected += 0.5 * wi * dropped * scale
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=0)
    # Deterministic for (seed, name); another name or seed draws another mask.
    assert torch.equal(out, _run("dare_task_arithmetic", base, models, w, **kw))
    assert not torch.equal(out, _run("dare_task_arithmetic", base, models, w, **{**kw, "key": "layer.b"}))
    assert S.tensor_seed(0, "a", 0) == S.tensor_seed(0, "a", 0) != S.tensor_seed(1, "a", 0)


def test_dare_drop_rate_and_rescale_statistics():
    tau = torch.ones(100_000)
    dropped = S.drop_and_rescale(tau, 0.9, seed=123, rescale="paper")
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.1) < 0.005
    torch.testing.assert_close(dropped[kept], torch.full((int(kept.sum()),), 10.0))
    assert abs(dropped.mean().item() - 1.0) < 0.05  # rescaling keeps the expected value
    l1 = S.drop_and_rescale(tau, 0.9, seed=123)  # mergekit's default: the L1 norm is kept exactly
    assert torch.equal(l1 != 0, kept) and l1.abs().sum().item() == pytest.approx(tau.sum().item(), rel=1e-6)


def test_dare_ties_is_drop_then_elect(trio):
    base, models = trio
    p, seed = 0.3, 1
    for normalize in (False, True):  # mergekit's dare_ties sums the agreeing entries unless normalize is set
        out = _run("dare_ties", base, models, [1.0, 0.5, 2.0], key="k", drop_rate=p, seed=seed, normalize=normalize)
        taus = [S.drop_and_rescale(m - base, p, S.tensor_seed(seed, "k", i), "l1") for i, m in enumerate(models)]
        # with density 1 the reference TIES does no trimming: it elects and combines the dropped vectors
        ref = _ties_reference(base, [base + t for t in taus], [1.0, 0.5, 2.0], 1.0, 1.0, normalize)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


def test_model_stock_by_hand():
    base = torch.tensor([1.0, 1.0, 1.0])
    m1, m2 = torch.tensor([2.0, 1.0, 1.0]), torch.tensor([2.0, 2.0, 1.0])
    cos = 1.0 / math.sqrt(2.0)  # between task vectors (1, 0, 0) and (1, 1, 0)
    t = 2 * cos / (1 + cos)
    expected = t * (m1 + m2) / 2 + (1 - t) * base
    torch.testing.assert_close(_run("model_stock", base, [m1, m2]), expected)


@pytest.mark.parametrize(
    "name,params",
    [
        ("linear", {}),
        ("ties", {"density": 1.0}),
        ("dare_ties", {"drop_rate": 0.0, "normalize": True}),
        ("dare_task_arithmetic", {"drop_rate": 0.0}),
        ("model_stock", {}),
    ],
)
def test_merging_identical_models_returns_the_model(trio, name, params):
    base, (model, _, _) = trio
    weights = [1.0 / 3] * 3 if name == "dare_task_arithmetic" else None
    out = _run(name, base, [model, model.clone(), model.clone()], weights, **params)
    torch.testing.assert_close(out, model, atol=1e-6, rtol=0)


def test_greedy_soup_with_toy_callback():
    values = [0.9, 1.3, 5.0, 1.05]
    candidates = [{"w": torch.full((3,), v), "step": torch.tensor(i)} for i, v in enumerate(values)]
    calls = []

    def evaluate(sd):  # accuracy peaks when w is 1
        calls.append(1)
        return -abs(sd["w"].mean().item() - 1.0)

    res = greedy_soup(candidates, evaluate)
    # order by own score: 1.05, 0.9, 1.3, 5.0; 0.9 helps (mean 0.975), 1.3 and 5.0 hurt
    assert res.ingredients == [3, 0]
    torch.testing.assert_close(res.state_dict["w"], torch.full((3,), 0.975))
    assert res.state_dict["step"].item() == 3  # integer tensors come from the first ingredient
    assert [h["kept"] for h in res.history] == [True, True, False, False]
    assert res.accuracy == pytest.approx(-0.025, abs=1e-6)
    assert [i for i, _ in res.kept()] == [3, 0] and res.kept()[1][1] == pytest.approx(-0.025, abs=1e-6)
    assert len(calls) == 4 + 3
    # known individual scores skip their evaluation
    res2 = greedy_soup(candidates, evaluate, individual=[-0.1, -0.3, -4.0, -0.05])
    assert res2.ingredients == [3, 0] and len(calls) == 7 + 3

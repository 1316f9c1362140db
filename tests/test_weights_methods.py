"""Merge methods against their definitions computed by hand, plus registry and greedy soup."""

from __future__ import annotations

import math

import pytest
import torch

from paint.errors import PaintError
from paint.weights import methods as M
from paint.weights.ops import lerp_tensor


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
        assert M.METHODS[name].fn.func is M.delta_merge


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
    models = [torch.tensor([3.0, -1.0, 0.5, -2.0]), torch.tensor([-4.0, 2.0, 0.1, 1.0]), torch.tensor([1.0, 0.9, -3.0, 0.2])]
    # density 0.5 keeps 2 of 4: [3, 0, 0, -2], [-4, 2, 0, 0], [1, 0, -3, 0]; summed mass [0, 2, -3, -2]
    # elects signs [0, +, -, -]; the disjoint means are [0, 2, -3, -2] (entry 0: no sign wins).
    out = _run("ties", base, models, density=0.5, scaling=0.5)
    assert torch.equal(out, torch.tensor([0.0, 1.0, -1.5, -1.0]))


def _ties_reference(base, models, weights, density, scaling):
    """TIES written element by element from the paper's three steps."""
    n = base.numel()
    k = round(density * n)
    taus = []
    for m, w in zip(models, weights):
        tau = (m.double() - base.double()).reshape(-1).tolist()
        keep = sorted(range(n), key=lambda j: -abs(tau[j]))[:k]
        taus.append([w * tau[j] if j in keep else 0.0 for j in range(n)])
    out = []
    for j in range(n):
        mass = sum(t[j] for t in taus)
        sign = (mass > 0) - (mass < 0)
        agree = [t[j] for t in taus if t[j] != 0 and ((t[j] > 0) - (t[j] < 0)) == sign]
        out.append(base.reshape(-1)[j].item() + scaling * (sum(agree) / len(agree) if agree else 0.0))
    return torch.tensor(out, dtype=torch.float64).reshape(base.shape)


def test_ties_matches_elementwise_definition(trio):
    base, models = trio
    out = _run("ties", base, models, [1.0, 0.5, 2.0], density=0.35, scaling=0.8)
    ref = _ties_reference(base, models, [1.0, 0.5, 2.0], 0.35, 0.8)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)


def test_dare_with_fixed_seed_matches_definition(trio):
    base, models = trio
    p, seed = 0.6, 7
    out = _run("dare_task_arithmetic", base, models, [1.0, 2.0, -1.0], key="layer.w", drop_rate=p, seed=seed, scaling=0.5)
    expected = base.double().clone()
    for i, (m, w) in enumerate(zip(models, [1.0, 2.0, -1.0])):
        gen = torch.Generator().manual_seed(M.tensor_seed(seed, "layer.w", i))
        keep = torch.rand(base.shape, generator=gen) >= p
        expected += 0.5 * w * (m.double() - base.double()) * keep / (1 - p)
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=0)
    # Deterministic for (seed, name); another name or seed draws another mask.
    again = _run("dare_task_arithmetic", base, models, [1.0, 2.0, -1.0], key="layer.w", drop_rate=p, seed=seed, scaling=0.5)
    assert torch.equal(out, again)
    other = _run("dare_task_arithmetic", base, models, [1.0, 2.0, -1.0], key="layer.b", drop_rate=p, seed=seed, scaling=0.5)
    assert not torch.equal(out, other)
    assert M.tensor_seed(0, "a", 0) == M.tensor_seed(0, "a", 0) != M.tensor_seed(1, "a", 0)


def test_dare_drop_rate_and_rescale_statistics():
    tau = torch.ones(100_000)
    dropped = M.drop_and_rescale(tau, 0.9, seed=123)
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.1) < 0.005
    torch.testing.assert_close(dropped[kept], torch.full((int(kept.sum()),), 10.0))
    assert abs(dropped.mean().item() - 1.0) < 0.05  # rescaling keeps the expected value


def test_dare_ties_is_drop_then_elect(trio):
    base, models = trio
    p, seed = 0.3, 1
    out = _run("dare_ties", base, models, key="k", drop_rate=p, seed=seed)
    taus = [M.drop_and_rescale(m - base, p, M.tensor_seed(seed, "k", i)) for i, m in enumerate(models)]
    # with density 1 the reference TIES does no trimming: it elects and averages the dropped vectors
    ref = _ties_reference(base, [base + t for t in taus], [1.0] * 3, 1.0, 1.0)
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
        ("dare_ties", {"drop_rate": 0.0}),
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

    res = M.greedy_soup(candidates, evaluate)
    # order by own score: 1.05, 0.9, 1.3, 5.0; 0.9 helps (mean 0.975), 1.3 and 5.0 hurt
    assert res.ingredients == [3, 0]
    torch.testing.assert_close(res.state_dict["w"], torch.full((3,), 0.975))
    assert res.state_dict["step"].item() == 3  # integer tensors come from the first ingredient
    assert [h["kept"] for h in res.history] == [True, True, False, False]
    assert res.accuracy == pytest.approx(-0.025, abs=1e-6)
    assert len(calls) == 4 + 3
    # known individual scores skip their evaluation
    res2 = M.greedy_soup(candidates, evaluate, individual=[-0.1, -0.3, -4.0, -0.05])
    assert res2.ingredients == [3, 0] and len(calls) == 7 + 3

"""Alpha selection rules on sweep points (accuracies are fractions)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from paint.selection import rule_key, select_alpha, select_candidates


def feasible(accs, zeroshot, support, epsilon, constraint):
    """The definition, written out independently of paint's objectives."""
    bound = epsilon / 100.0 + 1e-12
    if constraint == "mean":
        return sum(accs[t] for t in support) / len(support) >= sum(zeroshot[t] for t in support) / len(support) - bound
    return all(accs[t] >= zeroshot[t] - bound for t in support)


SWEEP = [
    {"alpha": 0.0, "val": {"p": 0.30, "a": 0.90, "b": 0.80}},
    {"alpha": 0.3, "val": {"p": 0.60, "a": 0.895, "b": 0.795}},
    {"alpha": 0.5, "val": {"p": 0.75, "a": 0.90, "b": 0.78}},  # b drops 2 points, mean drops 1
    {"alpha": 1.0, "val": {"p": 0.95, "a": 0.70, "b": 0.60}},
]


def test_mean_rule_weighs_groups_equally():
    # 0.5 * (p + mean(a, b)): alpha 1 -> 0.5 * (0.95 + 0.65) = 0.80 beats alpha 0.5 -> 0.795
    assert select_alpha(SWEEP, ["p"], ["a", "b"], "mean")["alpha"] == 1.0


def test_constrained_each_and_mean():
    each = select_alpha(SWEEP, ["p"], ["a", "b"], "constrained", epsilon=1.0, constraint="each")
    assert each["alpha"] == 0.3
    mean = select_alpha(SWEEP, ["p"], ["a", "b"], "constrained", epsilon=1.0, constraint="mean")
    assert mean["alpha"] == 0.5
    assert select_alpha(SWEEP, ["p"], ["a", "b"], "constrained", epsilon=0.0)["alpha"] == 0.0
    # the default bounds the support mean (the paper's one ImageNet number), as every command does
    assert select_alpha(SWEEP, ["p"], ["a", "b"])["alpha"] == 0.5


def test_candidates_report_every_rule_under_its_key():
    got = select_candidates(SWEEP, ["p"], ["a", "b"], epsilon=1.0)
    assert {k: v["alpha"] for k, v in got.items()} == {"mean": 1.0, "constrained-each": 0.3, "constrained-mean": 0.5}
    assert [rule_key("mean", "mean"), rule_key("constrained", "each"), rule_key("constrained", "mean")] == list(got)


def test_ties_go_to_the_smaller_alpha():
    flat = [{"alpha": a, "val": {"p": 0.5, "s": 0.9}} for a in (0.0, 0.2, 0.4)]
    assert select_alpha(flat, ["p"], ["s"], "mean")["alpha"] == 0.0
    assert select_alpha(flat, ["p"], ["s"], "constrained")["alpha"] == 0.0


accs = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(accs, accs, accs), min_size=1, max_size=8),
    st.tuples(accs, accs, accs),
    st.floats(0.0, 5.0),
    st.sampled_from(["each", "mean"]),
)
def test_constrained_never_ships_an_infeasible_alpha(points, zero, eps, constraint):
    sweep = [{"alpha": 0.0, "val": dict(zip("pab", zero))}]
    sweep += [{"alpha": (i + 1) / 10, "val": dict(zip("pab", v))} for i, v in enumerate(points)]
    got = select_alpha(sweep, ["p"], ["a", "b"], "constrained", eps, constraint)
    chosen = next(p for p in sweep if p["alpha"] == got["alpha"])
    assert feasible(chosen["val"], sweep[0]["val"], ["a", "b"], eps, constraint)
    best = max(p["val"]["p"] for p in sweep if feasible(p["val"], sweep[0]["val"], ["a", "b"], eps, constraint))
    assert chosen["val"]["p"] == best


def test_a_support_drop_of_exactly_epsilon_is_within_the_bound():
    """Accuracies are exact fractions: a float32 mean put a -1.0 point change at -1.000001 and refused it."""
    import pytest
    import torch

    from paint.evaluation.results import metrics_from_logits
    from paint.selection import select_alpha

    def metrics(n_right: int, n: int = 2000) -> float:
        labels = torch.zeros(n, dtype=torch.long)
        logits = torch.zeros(n, 2)
        logits[n_right:, 1] = 1.0  # wrong from n_right on
        return metrics_from_logits(logits, labels)["accuracy"]

    s0, s1 = [metrics(k) for k in (1970, 1966, 1950, 1934)], [metrics(k) for k in (1950, 1946, 1930, 1914)]
    assert sum(s1) / 4 - sum(s0) / 4 == pytest.approx(-0.01, abs=1e-15)  # exactly one point lower
    sweep = [
        {"alpha": 0.0, "val": {"p": 0.5, **{f"s{i}": v for i, v in enumerate(s0)}}},
        {"alpha": 0.7, "val": {"p": 0.9, **{f"s{i}": v for i, v in enumerate(s1)}}},
    ]
    assert select_alpha(sweep, ["p"], [f"s{i}" for i in range(4)], "constrained", 1.0, "mean")["alpha"] == 0.7

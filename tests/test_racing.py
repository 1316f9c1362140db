"""Racing the grid: the grid's rule on the survivors, fewer images read, and its settings checked."""

from __future__ import annotations

import numpy as np
import pytest

from paint.errors import PaintError
from paint.selection import select_alpha
from paint.selection.racing import RaceSettings, race_grid, racing_order, schedule

GRID = [round(0.1 * i, 1) for i in range(11)]


def _world(seed: int, n_patch: int = 400, n_support: int = 1000):
    """Per-image correctness at every alpha: patching accuracy rises with alpha, the support task falls past 0.5."""
    rng = np.random.default_rng(seed)
    u_p, u_s = rng.random(n_patch), rng.random(n_support)
    truth = {}
    for a in GRID:
        p_rate = 0.45 + 0.5 * a
        s_rate = 0.96 - (0.0 if a <= 0.5 else 0.12 * (a - 0.5) ** 1.5 * 10)
        truth[a] = {"p": u_p < p_rate, "s": u_s < s_rate}  # nested: an image right at alpha is right before too
    return truth


def _grid_choice(truth, epsilon=1.0):
    sweep = [{"alpha": a, "val": {t: float(v.mean()) for t, v in truth[a].items()}} for a in GRID]
    return select_alpha(sweep, ["p"], ["s"], "constrained", epsilon, "mean")["alpha"]


@pytest.mark.parametrize("seed", range(5))
def test_the_race_chooses_the_grids_alpha_and_reads_fewer_images(seed):
    truth = _world(seed)
    orders = {t: racing_order(t, truth[0.0][t].size) for t in ("p", "s")}

    def read(a, task, start, stop):
        return truth[round(a, 10)][task][orders[task][start:stop]]

    r = race_grid(GRID, {"p": 400, "s": 1000}, ["p"], ["s"], read, settings=RaceSettings(z=2.5))
    assert r.alpha == _grid_choice(truth)
    assert r.images_read < r.images_full and r.alpha in r.survivors
    eliminated = [e["alpha"] for rnd in r.rounds for e in rnd["eliminated"]]
    assert 1.0 in eliminated  # alpha 1 loses 5 points of support: settled early, not read to the end
    assert set(eliminated).isdisjoint(r.survivors)


def test_schedule_and_settings_are_checked():
    assert schedule(10, 0.1, 2.0) == [1, 2, 4, 8, 10] and schedule(5, 1.0, 2.0) == [5]
    with pytest.raises(PaintError, match="growth > 1"):
        schedule(10, 0.1, 1.0)
    with pytest.raises(PaintError, match="objective 'constrained' or 'mean_accuracy'"):
        race_grid(GRID, {"p": 4}, ["p"], [], lambda *a: np.ones(1, bool), objective="loss_sum")
    order = racing_order("digits", 50)
    assert sorted(order.tolist()) == list(range(50)) and racing_order("digits", 50).tolist() == order.tolist()

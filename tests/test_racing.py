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


def patch_grid_and_race(tmp_path, name: str, race: dict) -> dict[str, dict]:
    """``paint patch`` on paint:tiny (digits vs shapes and colours) twice, sharing one fine-tune: the plain grid
    (``tmp_path/grid``, ``race: null``) and the grid with ``selection.race: race`` (``tmp_path/<name>``); their summaries."""
    import json

    import yaml

    from paint.cli import main

    base = {
        "model": "paint:tiny",
        "patch_tasks": [{"name": "digits", "val_fraction": 0.2}],
        "support_tasks": ["shapes", "colours"],
        "finetune": {"epochs": 2, "lr": 3e-4, "batch_size": 128, "warmup_steps": 2, "seed": 0},
        "threads": 1,
    }
    runs = {}
    for run, selection in (("grid", {"race": None}), (name, {"race": race})):
        cfg = {**base, "output_dir": str(tmp_path / run), "selection": selection, "cache_dir": str(tmp_path / "cache")}
        (tmp_path / f"{run}.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["patch", str(tmp_path / f"{run}.yaml")]) == 0
        runs[run] = json.loads((tmp_path / run / "summary.json").read_text())
    return runs


def test_a_raced_patch_run_reads_what_the_replay_says_and_records_each_chunk(tmp_path):
    """Live racing (selection.race) equals the race replayed from the full grid's per-image records."""

    from paint.cli import main
    from paint.evaluation.results import ResultsStore
    from paint.stats import decode_correct

    runs = patch_grid_and_race(tmp_path, "race", {"first": 0.1, "z": 2.5})
    race = runs["race"]["selection"]["search"]
    assert runs["race"]["selection"]["rule"] == "race:grid/constrained-mean"
    # replay the race from the plain grid's full-split records (the same fine-tune: same seed, same data)
    tasks = ["digits", "shapes", "colours"]
    recs = {
        (r["alpha"], r["task"]): r
        for r in ResultsStore(tmp_path / "grid" / "results.jsonl").records()
        if r["split"] == "val"
    }
    sizes = {t: int(recs[(0.0, t)]["n"]) for t in tasks}
    full = {k: decode_correct(r["correct"], int(r["n"])) for k, r in recs.items()}
    orders = {t: racing_order(t, n) for t, n in sizes.items()}
    replay = race_grid(
        GRID, sizes, ["digits"], ["shapes", "colours"], lambda a, t, s, e: full[(round(a, 10), t)][orders[t][s:e]]
    )
    assert race["alpha"] == replay.alpha == runs["race"]["alpha"]
    assert race["images_read"] == replay.images_read <= race["images_full"]
    chunks = [
        r for r in ResultsStore(tmp_path / "race" / "results.jsonl").records() if r["split"].startswith("val[race:")
    ]
    assert sum(r["n"] for r in chunks) == race["images_read"]  # the results file records what each evaluation read
    n_lines = len((tmp_path / "race" / "results.jsonl").read_text().splitlines())
    (tmp_path / "race" / "summary.json").unlink()
    assert main(["patch", str(tmp_path / "race.yaml"), "--resume"]) == 0  # a resumed race reads its chunks back
    assert len((tmp_path / "race" / "results.jsonl").read_text().splitlines()) == n_lines

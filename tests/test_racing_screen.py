"""The race screened by the line's ends: only images not right at both ends race, the replay equals a live run,
the confirmation's fallback, and the screen never underestimates a candidate."""

from __future__ import annotations

import numpy as np
import pytest

from paint.cli import main
from paint.errors import PaintError
from paint.evaluation.results import ResultsStore
from paint.selection import SelectionConfig, select_alpha
from paint.selection.racing import RaceSettings, race_grid
from paint.selection.screening import screen_grid, screened_rows
from paint.stats import decode_correct
from tests.test_racing import patch_grid_and_race

GRID = [round(0.1 * i, 1) for i in range(11)]


def _world(seed: int, n_patch: int = 400, n_support: int = 1000) -> dict[float, dict[str, np.ndarray]]:
    """Monotone correctness: a patching image right at alpha stays right above it, a support image right below it."""
    rng = np.random.default_rng(seed)
    u_p, u_s = rng.random(n_patch), rng.random(n_support)
    return {
        a: {"p": u_p < 0.45 + 0.5 * a, "s": u_s < 0.96 - (0.0 if a <= 0.5 else 1.2 * (a - 0.5) ** 1.5)} for a in GRID
    }


def _grid_choice(truth: dict[float, dict[str, np.ndarray]]) -> float:
    sweep = [{"alpha": a, "val": {t: float(v.mean()) for t, v in truth[a].items()}} for a in GRID]
    return select_alpha(sweep, ["p"], ["s"], "constrained", 1.0, "mean")["alpha"]


def _screen(truth, settings=RaceSettings(screen=True)):
    """Screen the grid on ``truth``, logging every read: (alpha, {task: rows})."""
    log: list[tuple[float, dict[str, np.ndarray]]] = []

    def read_rows(a, rows):
        log.append((a, {t: np.asarray(r) for t, r in rows.items()}))
        return {t: truth[round(a, 10)][t][r] for t, r in rows.items()}

    race = screen_grid(GRID, ["p"], ["s"], lambda a: truth[round(a, 10)], read_rows, settings=settings)
    return race, log


@pytest.mark.parametrize("seed", range(4))
def test_intermediate_candidates_read_only_the_screened_images_and_the_winner_is_confirmed(seed):
    truth = _world(seed)
    race, log = _screen(truth)
    screened = {t: set(np.flatnonzero(~(truth[0.0][t] & truth[1.0][t])).tolist()) for t in ("p", "s")}
    confirmations = [(a, rows) for a, rows in log if any(not set(r.tolist()) <= screened[t] for t, r in rows.items())]
    assert all(a not in (0.0, 1.0) for a, _ in log)  # the ends are read once, in full
    # every read but the winner's confirmation is of screened images only; the confirmation reads the settled ones
    assert [a for a, _ in confirmations] == [race.alpha]
    for t, r in confirmations[0][1].items():
        assert set(r.tolist()) == set(range(truth[0.0][t].size)) - screened[t]
    assert race.alpha == _grid_choice(truth)
    assert race.screening["settled_flips"] == {f"{race.alpha:g}": {"p": 0, "s": 0}}
    n = sum(v.size for v in truth[0.0].values())
    read = 2 * n + sum(r.size for _, rows in log for r in rows.values())
    assert race.images_read == read < 0.5 * race.images_full  # the ends, every candidate's reads, the confirmation


def test_a_settled_image_that_flips_at_the_winner_is_caught_and_the_candidate_it_beat_confirmed():
    truth = _world(0)
    winner = _grid_choice(truth)
    sweep_before = screen_grid(
        GRID, ["p"], ["s"], lambda a: truth[a], lambda a, rows: {t: truth[a][t][r] for t, r in rows.items()}
    )
    assert sweep_before.alpha == winner
    # 15 support images right at both ends are wrong at the winner only: it breaks the bound (the grid moves down)
    settled = np.flatnonzero(truth[0.0]["s"] & truth[1.0]["s"])[:15]
    truth[winner]["s"] = truth[winner]["s"].copy()
    truth[winner]["s"][settled] = False
    race, log = _screen(truth)
    assert race.alpha == _grid_choice(truth) < winner
    assert race.screening["settled_flips"][f"{winner:g}"]["s"] == 15
    assert winner in race.screening["confirmed"] and race.alpha in race.screening["confirmed"]
    # the new winner had been beaten by the old one during the race: it came back and read the rest of its images
    assert race.alpha in race.screening["revived"] and race.alpha in race.survivors


def _gentle() -> dict[float, dict[str, np.ndarray]]:
    """The support mean falls 2.5 points per unit of alpha: the bound of 1 point holds up to alpha 0.4."""
    rng = np.random.default_rng(1)
    u_p, u_s = rng.random(400), rng.random(1000)
    return {a: {"p": u_p < 0.45 + 0.5 * a, "s": u_s < 0.96 - 0.025 * a} for a in GRID}


def test_settled_images_seen_to_flip_at_the_winner_are_read_at_the_survivors_too():
    """Five support images right at both ends are wrong at the winner: it breaks the bound, the next one down wins."""
    truth = _gentle()
    winner = _grid_choice(truth)
    settled = np.flatnonzero(truth[0.0]["s"] & truth[1.0]["s"])[:5]
    truth[winner]["s"] = truth[winner]["s"].copy()
    truth[winner]["s"][settled] = False
    below = _grid_choice(truth)
    assert below == round(winner - 0.1, 1)
    race, log = _screen(truth)
    assert race.alpha == below and race.screening["settled_flips"][f"{winner:g}"]["s"] == 5
    assert race.screening["confirmed"] == [0.0, below, winner, 1.0]
    # before its own confirmation, the candidate below read the flipped images with the screened ones it had left
    screened = set(np.flatnonzero(~(truth[0.0]["s"] & truth[1.0]["s"])).tolist())
    reads_below = [set(rows["s"].tolist()) for a, rows in log if a == below and "s" in rows]
    assert any(r - screened == set(settled.tolist()) for r in reads_below)


def test_images_wrong_at_both_ends_that_an_inner_alpha_gets_right_are_raced():
    """An interpolated model often gets right what both ends get wrong: those images are in the screen.

    Here the next alpha above the winner gets every support image wrong at both ends right and so
    holds the bound after all; the grid takes it, and so does the screened race.
    """
    truth = _world(1)
    winner = _grid_choice(truth)
    above = round(winner + 0.1, 1)
    wrong_both = np.flatnonzero(~truth[0.0]["s"] & ~truth[1.0]["s"])
    truth[above]["s"] = truth[above]["s"].copy()
    truth[above]["s"][wrong_both] = True
    assert _grid_choice(truth) == above
    race, _ = _screen(truth)
    assert race.alpha == above == _grid_choice(truth)


def test_settled_images_that_flip_at_a_candidate_never_confirmed_cannot_change_the_choice():
    """The screen bounds every candidate from above (a settled image can only go wrong), so a flip off the
    winner only lowers a candidate that lost anyway: here half the settled support images go wrong at 0.8."""
    truth = _world(2)
    winner = _grid_choice(truth)
    settled = np.flatnonzero(truth[0.0]["s"] & truth[1.0]["s"])
    truth[0.8]["s"] = truth[0.8]["s"].copy()
    truth[0.8]["s"][settled[::2]] = False
    assert _grid_choice(truth) == winner != 0.8
    race, _ = _screen(truth)
    assert race.alpha == winner and 0.8 not in race.screening["confirmed"]


def test_screening_settings_are_checked():
    with pytest.raises(PaintError, match="between the line's ends"):
        screen_grid([0.0, 1.5], ["p"], [], lambda a: {"p": np.ones(4, bool)}, lambda a, r: {})
    with pytest.raises(PaintError, match="call screen_grid"):
        race_grid(GRID, {"p": 4}, ["p"], [], lambda *a: np.ones(1, bool), settings=RaceSettings(screen=True))
    with pytest.raises(PaintError, match="z > 0"):
        RaceSettings(z=0.0)
    order = np.array([4, 0, 3, 1, 2])
    screened = screened_rows(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 1], bool), order)
    assert screened.tolist() == [3, 1, 2]  # wrong at an end, in the racing order


def test_a_screened_patch_run_reads_what_the_replay_says_and_records_each_read(tmp_path):
    """Live screened racing equals the screened race replayed from the full grid's per-image records."""
    settings = RaceSettings(first=0.1, z=2.5, screen=True)
    runs = patch_grid_and_race(tmp_path, "screen", {"first": 0.1, "z": 2.5, "screen": True})
    live = runs["screen"]["selection"]["search"]
    assert runs["screen"]["selection"]["rule"] == "screened-race:grid/constrained-mean"
    tasks = ["digits", "shapes", "colours"]
    records = ResultsStore(tmp_path / "grid" / "results.jsonl").records()
    full = {(r["alpha"], r["task"]): decode_correct(r["correct"], int(r["n"])) for r in records if r["split"] == "val"}
    replay = screen_grid(
        GRID,
        ["digits"],
        ["shapes", "colours"],
        lambda a: {t: full[(round(a, 10), t)] for t in tasks},
        lambda a, rows: {t: full[(round(a, 10), t)][r] for t, r in rows.items()},
        settings=settings,
    )
    assert live["alpha"] == replay.alpha == runs["screen"]["alpha"] == runs["grid"]["alpha"]
    assert live["images_read"] == replay.images_read < live["images_full"]
    assert live["screening"] == replay.record()["screening"]
    records = list(ResultsStore(tmp_path / "screen" / "results.jsonl").records())
    ends = [r for r in records if r["split"] == "val"]
    reads = [r for r in records if r["split"].startswith("val[screen:")]
    assert sorted({r["alpha"] for r in ends}) == [0.0, 1.0]  # only the ends read in full
    assert sum(r["n"] for r in ends + reads) == live["images_read"]  # the results file records what each read
    n_lines = len((tmp_path / "screen" / "results.jsonl").read_text().splitlines())
    (tmp_path / "screen" / "summary.json").unlink()
    assert main(["patch", str(tmp_path / "screen.yaml"), "--resume"]) == 0  # a resumed race reads its records back
    assert len((tmp_path / "screen" / "results.jsonl").read_text().splitlines()) == n_lines


def test_screening_refuses_alphas_off_the_segment_at_the_config_edge():
    with pytest.raises(ValueError, match=r"race.screen races alphas in \[0, 1\] only"):
        SelectionConfig(strategy="grid", alphas=[0.0, 0.5, 1.2], allow_extrapolation=True, race={"screen": True})
    plain = SelectionConfig(strategy="grid", alphas=[0.0, 0.5, 1.2], allow_extrapolation=True, race={"screen": False})
    assert plain.race is not None and plain.race.screen is False


def _rough_world(seed: int) -> dict[float, dict[str, np.ndarray]]:
    """No structure the screen could lean on: every image's correctness drawn afresh at every inner alpha.

    An image right at both ends goes wrong with 0.5%; one right at alpha 0 only stays right with
    1 - alpha, one right at alpha 1 only is right with alpha; one wrong at both ends is right with
    ``bonus * sin(pi * alpha)`` (interpolation often gets these right). Two support tasks that lose
    what fine-tuning broke, at a rate and with a bonus drawn per seed, so the grid's choice varies.
    """
    rng = np.random.default_rng(seed)
    n = {"p": 300, "s1": 400, "s2": 400}
    broken, bonus = rng.uniform(0.05, 0.2), rng.uniform(0.1, 0.6)
    world: dict[float, dict[str, np.ndarray]] = {0.0: {}, 1.0: {}}
    for t, k in n.items():
        c0 = rng.random(k) < (0.4 if t == "p" else 0.9)
        c1 = rng.random(k) < 0.9 if t == "p" else (c0 & (rng.random(k) > broken)) | (~c0 & (rng.random(k) < 0.2))
        world[0.0][t], world[1.0][t] = c0, c1
    for a in GRID[1:-1]:
        world[a] = {}
        for t in n:
            c0, c1 = world[0.0][t], world[1.0][t]
            p_right = np.select([c0 & c1, c0, c1], [0.995, 1 - a, a], bonus * np.sin(np.pi * a))
            world[a][t] = rng.random(c0.size) < p_right
    return world


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("rule", [("constrained", "mean"), ("constrained", "each"), ("mean_accuracy", "mean")])
def test_without_the_races_intervals_the_screened_choice_is_the_full_grids(seed, rule):
    """The screen bounds every candidate from above and the winner is confirmed: with intervals so wide that
    only a fully read candidate can drop out, the screened race chooses exactly what the full grid does."""
    truth = _rough_world(seed)
    objective, constraint = rule
    sweep = [{"alpha": a, "val": {t: float(v.mean()) for t, v in truth[a].items()}} for a in GRID]
    grid = select_alpha(sweep, ["p"], ["s1", "s2"], objective, 1.0, constraint)["alpha"]
    race = screen_grid(
        GRID,
        ["p"],
        ["s1", "s2"],
        lambda a: truth[round(a, 10)],
        lambda a, rows: {t: truth[round(a, 10)][t][r] for t, r in rows.items()},
        objective,
        1.0,
        constraint,
        RaceSettings(z=1e6, screen=True),
    )
    assert race.alpha == grid

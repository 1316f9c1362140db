"""Progress off a terminal: a few whole lines, no carriage returns; threads: auto from cores and load."""

import io
import time

import pytest

from paint.errors import PaintError
from paint.progress import LineProgress, counter, phase, progress, ticking
from paint.runtime import auto_threads, parse_threads, resolve_threads


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_tty_progress_is_a_few_lines_without_carriage_returns():
    out = _Pipe()
    for _ in progress(range(2000), desc="alpha sweep", file=out, interval=0.02):
        time.sleep(0.00005)
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    # 2000 steps in ~0.1-0.5 s with a 0.02 s period: a bounded number of lines, not one per step.
    assert 1 <= len(lines) <= 60, lines
    assert all(line.startswith("alpha sweep: ") for line in lines)
    assert lines[-1].startswith("alpha sweep: done: 2000/2000 it (100%)")


def test_short_phase_leaves_no_line_and_manual_updates_work():
    out = _Pipe()
    bar = progress(total=5, desc="fine-tune", file=out, interval=60)
    for _ in range(5):
        bar.update(1)
        bar.set_postfix(loss="0.5")
    bar.close()
    bar.close()  # idempotent, as tqdm's
    assert out.getvalue() == ""  # under MIN_END_SECONDS and no period elapsed: silence, not noise
    assert isinstance(bar, LineProgress) and bar.n == 5


def test_terminal_gets_a_tqdm_bar():
    from tqdm import tqdm

    bar = progress(range(3), desc="x", file=_Terminal())
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]


def test_counter_counts_calls_of_a_ticking_function():
    out = _Pipe()
    with counter("alpha search", total=3) as bar:
        bar.file, bar.interval = out, 0.0
        f = ticking(lambda a: a * 2, bar)
        assert [f(1), f(2), f(3)] == [2, 4, 6]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("alpha search: 1/3 eval (33%)")
    assert lines[-1].startswith("alpha search: done: 3/3 eval (100%)")


def test_phase_announces_start(capsys):
    with phase("GradientSimilarity"):
        pass
    assert capsys.readouterr().err == "GradientSimilarity ...\n"


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [(2, 0.1, 2), (2, 1.0, 1), (2, 1.8, 1), (2, 5.0, 1), (2, 0.4, 1), (16, 4.2, 12), (16, 4.5, 11), (4, None, 4)],
)
def test_auto_threads_uses_idle_cores(cores, load, expected):
    assert auto_threads(cores, load) == expected


def test_threads_values():
    assert parse_threads("auto") == "auto" and parse_threads("3") == 3 and parse_threads(None) is None
    assert resolve_threads(2) == (2, "set")
    n, why = resolve_threads("auto")
    assert n >= 1 and why.startswith("auto: ")
    with pytest.raises(PaintError, match="threads must be 'auto' or an integer from 1 to 4096, got 0"):
        parse_threads(0)


def test_threads_line_waits_for_the_first_progress_output(capsys):
    import torch

    from paint.runtime import apply_threads, drop_pending

    before = torch.get_num_threads()
    try:
        assert apply_threads(1, defer=True) == 1 and torch.get_num_threads() == 1
        assert capsys.readouterr().err == ""  # a user error now would be the only line
        for _ in progress(range(2), desc="work", file=_Pipe()):
            pass
        for _ in progress(range(2), desc="more", file=_Pipe()):
            pass
        assert capsys.readouterr().err.splitlines() == [
            "threads: 1 (set; choose with --threads N or threads: in the config)"
        ]
        apply_threads(1, defer=True)
        drop_pending()
        with phase("x"):
            pass
        assert "threads:" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_the_last_step_is_reported_once_and_an_interrupted_phase_says_stopped():
    out = _Pipe()
    for _ in progress(range(3), desc="sweep", file=out, interval=0.0):  # a line at every step but the last
        pass
    lines = out.getvalue().splitlines()
    assert [ln.split(" in ")[0] for ln in lines] == [
        "sweep: 1/3 it (33%)",
        "sweep: 2/3 it (67%)",
        "sweep: done: 3/3 it (100%)",
    ]
    out = _Pipe()
    with pytest.raises(KeyboardInterrupt):
        for i in progress(range(21), desc="search", file=out, interval=0.0):
            if i == 6:
                raise KeyboardInterrupt
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("search: stopped at 6/21") and "done" not in last
    out = _Pipe()
    bar = LineProgress(desc="per-block", total=21, file=out, interval=0.0)
    with pytest.raises(RuntimeError), bar:
        bar.update(2)
        raise RuntimeError("boom")
    assert out.getvalue().splitlines()[-1].startswith("per-block: stopped at 2/21")


def test_an_absurd_thread_count_is_a_one_line_error_not_an_overflow(capsys):
    from paint.cli import main

    with pytest.raises(PaintError, match="integer from 1 to 4096"):
        parse_threads("99999999999999999999999")
    assert main(["eval", "--model", "paint:tiny", "--task", "colours", "--threads", "99999999999999999999999"]) == 2
    assert "threads must be 'auto' or an integer from 1 to 4096" in capsys.readouterr().err

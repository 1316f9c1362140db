"""The docs' Python examples run as shown, and what they claim holds."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def test_the_api_session_runs_and_patches_digits_as_the_readme_says(tmp_path, monkeypatch, capsys):
    (block,) = _python_blocks(ROOT / "docs" / "api.md")
    monkeypatch.chdir(tmp_path)  # its output_dir is relative
    scope: dict = {}
    exec(compile(block, "docs/api.md", "exec"), scope)  # noqa: S102 - the documented example itself
    summary, theta, theta_zs = scope["summary"], scope["theta"], scope["theta_zs"]
    digits = summary["test"]["digits"]
    assert 0.0 < summary["alpha"] < 1.0
    assert digits["patched"] >= digits["zeroshot"] + 0.25  # the README: 48 -> 85 on test
    assert set(theta) == set(theta_zs) and scope["head"].shape[0] == 10
    assert (tmp_path / "runs" / "digits" / "summary.json").is_file()


def test_a_warmup_longer_than_the_run_is_warned_about(caplog):
    from paint.train.loop import warn_long_warmup

    with caplog.at_level(logging.WARNING, logger="paint.train.loop"):
        assert warn_long_warmup(500, 90, "fine-tune")
        assert not warn_long_warmup(20, 160, "fine-tune")
    assert "warmup_steps (500) is not shorter than the run (90 optimizer steps)" in caplog.text

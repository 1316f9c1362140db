"""The run directory: refusals, the exclusive lock (live and stale), the config check on resume
(before anything is written), and the cleanup of temporaries that a killed run left."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import pytest
import yaml

from paint.errors import PaintError
from paint.pipeline.rundir import LOCK_NAME, RunDir, run_scope
from paint.train.finetune import FinetuneConfig
from paint.utils import TEMP_PREFIX, atomic_path, clean_stale_temps


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _locked_child(path) -> tuple[int, int]:
    """Fork a process that takes the lock of ``path`` and waits; returns (pid, write end of its pipe)."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: lock, say so, wait for the parent (or a kill)
        try:
            path.mkdir(parents=True, exist_ok=True)
            held = RunDir(path)
            held.lock()
            os.write(ready_w, b"1")
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    os.close(ready_w)  # so that a child that dies before locking gives EOF, not a hang
    ok = os.read(ready_r, 1)
    os.close(ready_r)
    assert ok == b"1", "the child could not take the lock"
    return pid, w


def test_a_second_open_on_the_same_directory_is_refused(tmp_path):
    cfg = FinetuneConfig()
    with RunDir(tmp_path / "run").open(cfg, resume=False):
        with pytest.raises(PaintError, match=r"run is in use by another paint run \(pid \d+ on .*\); wait for it"):
            RunDir(tmp_path / "run").start(cfg, resume=True)
    # released at the end of the block: the lock file is gone and a resume may start
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunDir(tmp_path / "run").open(cfg, resume=True):
        pass


def test_a_run_in_another_process_holds_the_lock_until_it_dies(tmp_path, caplog):
    pid, pipe = _locked_child(tmp_path / "run")
    try:
        with pytest.raises(PaintError, match=f"in use by another paint run \\(pid {pid} on "):
            RunDir(tmp_path / "run").start(FinetuneConfig(), resume=True)
    finally:
        os.kill(pid, signal.SIGKILL)  # killed while holding it: the lock file stays, with its pid
        os.waitpid(pid, 0)
        os.close(pipe)
    assert (tmp_path / "run" / LOCK_NAME).read_text().split()[0] == str(pid)
    with caplog.at_level(logging.WARNING):
        run = RunDir(tmp_path / "run").start(FinetuneConfig(), resume=True)
    assert run.took_over["pid"] == pid
    assert f"taking over the lock left by pid {pid}" in caplog.text
    run.close()


def test_a_stale_lock_file_with_a_dead_pid_is_taken_over(tmp_path, caplog):
    run_path = tmp_path / "run"
    run_path.mkdir()
    dead = _dead_pid()
    (run_path / LOCK_NAME).write_text(f"{dead} {os.uname().nodename}\n")
    with caplog.at_level(logging.WARNING):
        with RunDir(run_path).open(FinetuneConfig(), resume=False) as run:
            assert run.took_over["pid"] == dead
            assert (run_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    assert f"taking over the lock left by pid {dead}" in caplog.text


def test_run_scope_releases_the_lock_when_the_run_raises(tmp_path):
    @run_scope
    def failing_run():
        RunDir(tmp_path / "run").start(FinetuneConfig(), resume=False)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_run()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    RunDir(tmp_path / "run").start(FinetuneConfig(), resume=True).close()


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "out"
    f.write_text("not a directory")
    with pytest.raises(PaintError, match="output_dir .*out is an existing file, not a directory"):
        RunDir(f).check(resume=False)


def test_finished_and_unfinished_runs_need_resume(tmp_path):
    run = tmp_path / "run"
    with RunDir(run).open(FinetuneConfig(), resume=False):
        pass
    with pytest.raises(PaintError, match="holds an unfinished run; pass --resume"):
        RunDir(run).check(resume=False)
    (run / "summary.json").write_text("{}")
    with pytest.raises(PaintError, match="already holds a finished run"):
        RunDir(run).start(FinetuneConfig(), resume=False)


def test_a_refused_resume_leaves_the_stored_config_untouched(tmp_path):
    run = tmp_path / "run"
    with RunDir(run).open(FinetuneConfig(lr=1e-3), resume=False) as r:
        r.write_summary({"done": True})
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(PaintError, match=r"different config \(lr: 0\.001 there, 0\.002 now\)"):
        RunDir(run).start(FinetuneConfig(lr=2e-3), resume=True)
    assert (run / "config.yaml").read_bytes() == before
    assert not (run / LOCK_NAME).exists()
    # A field that does not change results (where the cache lives) may change on resume.
    with RunDir(run).open({**yaml.safe_load(before), "cache_dir": "/elsewhere"}, resume=True):
        pass


def test_a_refused_run_leaves_no_directory_behind(tmp_path):
    other = RunDir(tmp_path / "run")
    other.start(FinetuneConfig(), resume=False)
    (tmp_path / "run" / "config.yaml").unlink()
    try:
        with pytest.raises(PaintError, match="in use"):
            RunDir(tmp_path / "run").start(FinetuneConfig(), resume=True)
    finally:
        other.close()
    assert list((tmp_path / "run").iterdir()) == []


def test_temporaries_left_by_a_killed_write_are_removed_on_the_next_start(tmp_path):
    run = tmp_path / "run"
    (run / "finetune").mkdir(parents=True)
    pid = os.fork()
    if pid == 0:  # killed in the middle of an atomic checkpoint write
        with atomic_path(run / "finetune" / "checkpoint") as tmp:
            tmp.mkdir()
            (tmp / "trainable.safetensors").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    left = [p.name for p in (run / "finetune").iterdir()]
    assert len(left) == 1 and left[0].startswith(f"{TEMP_PREFIX}{pid}.checkpoint.")
    # A live process's temporary (a shared cache being written right now) is kept.
    live = run / "cache" / f"{TEMP_PREFIX}{os.getpid()}.heads.abc"
    live.mkdir(parents=True)
    r = RunDir(run).start(FinetuneConfig(), resume=True)
    r.close()
    assert [p.name for p in (run / "finetune").iterdir()] == []
    assert r.removed_temps == [run / "finetune" / left[0]]
    assert live.is_dir()


def test_clean_stale_temps_ignores_ordinary_hidden_files(tmp_path):
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / f"{TEMP_PREFIX}{_dead_pid()}.model.q1").mkdir()
    removed = clean_stale_temps(tmp_path)
    assert [p.name for p in removed][0].startswith(TEMP_PREFIX)
    assert [p.name for p in tmp_path.iterdir()] == [".hidden"]

"""Bad inputs and a failing disk end in one line and exit 2: config files, config values, an
output_dir that is a file, a locked output_dir, a changed config on resume, disk full; and a
torn results line is neither glued to the next record nor fatal."""

from __future__ import annotations

import errno
import json
import logging
import math
from pathlib import Path

import pytest
import yaml

from paint.cli import main
from paint.config import load_config, parse_config
from paint.errors import PaintError
from paint.evaluation.results import ResultKey, ResultsStore
from paint.pipeline.patch import PatchConfig
from paint.pretraining.build import PretrainConfig
from paint.utils import append_jsonl, atomic_path, read_jsonl

BASE = {"model": "m", "output_dir": "o", "patch_tasks": ["digits"]}


def _one_error_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- config files


def test_config_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("model: m\noutput_dir: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(PaintError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9 at offset 24\)"):
        load_config(PatchConfig, cfg)
    _one_error_line(capsys, ["patch", str(cfg)], "not UTF-8 text")


def test_deeply_nested_yaml_is_one_line(tmp_path):
    cfg = tmp_path / "deep.yaml"
    cfg.write_text("model: " + "[" * 6000 + "]" * 6000 + "\n")
    with pytest.raises(PaintError, match="deep.yaml: nested too deeply to be a config"):
        load_config(PatchConfig, cfg)


def test_config_path_that_is_a_directory_is_one_line(tmp_path):
    with pytest.raises(PaintError, match="is a directory; give the path of a YAML file"):
        load_config(PatchConfig, tmp_path)


# ----------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**BASE, "finetune": {"lr": math.inf}}, r"finetune\.lr: Input should be a finite number"),
        ({**BASE, "finetune": {"lr": math.nan}}, r"finetune\.lr: Input should be a finite number"),
        ({**BASE, "finetune": {"seed": -1}}, r"finetune\.seed: .*seed must be an integer in \[0, 4294967295\], got -1"),
        ({**BASE, "finetune": {"seed": 10**30}}, r"finetune\.seed: .*seed must be an integer in \[0, 4294967295\]"),
        ({**BASE, "patch_tasks": [{"name": "digits", "split_seed": -3}]}, r"patch_tasks\.0\.split_seed: .*got -3"),
        ({**BASE, "finetune": {"batch_size": 10**30}}, r"finetune\.batch_size: .*at most 9223372036854775807"),
    ],
)
def test_config_values_are_bounded(data, message):
    with pytest.raises(PaintError, match=message):
        parse_config(PatchConfig, data)


def test_numbers_inside_free_form_fields_are_finite():
    with pytest.raises(PaintError, match="clip: .*must be a finite number, got nan"):
        parse_config(PretrainConfig, {"clip": {"hidden_size": 32, "scale": math.nan}})
    assert parse_config(PatchConfig, {**BASE, "finetune": {"seed": 2**32 - 1}}).finetune.seed == 2**32 - 1


def test_infinite_lr_in_a_yaml_file_is_refused_before_any_output(tiny_clip_dir, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump({"model": str(tiny_clip_dir), "output_dir": str(tmp_path / "run"), "patch_tasks": ["digits"]})
        + "finetune: {lr: .inf}\n"
    )
    _one_error_line(capsys, ["patch", str(cfg)], "finetune.lr: Input should be a finite number")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the output directory


def _patch_config(tmp_path: Path, model: Path, **extra) -> Path:
    cfg = {
        "model": str(model),
        "output_dir": str(tmp_path / "run"),
        "patch_tasks": ["digits"],
        "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 64, "warmup_steps": 2, "max_steps": 2},
        "selection": {"strategy": "grid", "alphas": [0.0, 1.0]},
        "eval_batch_size": 512,
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_output_dir_that_is_a_file_is_one_line(tiny_clip_dir, tmp_path, capsys):
    (tmp_path / "run").write_text("a file")
    _one_error_line(
        capsys, ["patch", str(_patch_config(tmp_path, tiny_clip_dir))], "is an existing file, not a directory"
    )


def test_a_second_paint_patch_on_a_locked_output_dir_is_refused(tiny_clip_dir, tmp_path, capsys):
    from paint.pipeline.rundir import RunDir

    holder = RunDir(tmp_path / "run")
    holder.start(PatchConfig(**BASE), resume=False)  # another run, still going
    (tmp_path / "run" / "config.yaml").unlink()
    try:
        _one_error_line(
            capsys, ["patch", str(_patch_config(tmp_path, tiny_clip_dir)), "--resume"], "is in use by another paint run"
        )
    finally:
        holder.close()
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_a_refused_resume_does_not_overwrite_the_finished_runs_config(tiny_clip_dir, tmp_path, capsys):
    from paint.pipeline.rundir import RunDir

    first = parse_config(PatchConfig, yaml.safe_load(_patch_config(tmp_path, tiny_clip_dir).read_text()))
    with RunDir(first.output_dir).open(first, resume=False) as run:
        run.write_summary({"alpha": 0.5})
    stored = (tmp_path / "run" / "config.yaml").read_bytes()
    changed = _patch_config(tmp_path, tiny_clip_dir, finetune={"epochs": 1, "lr": 5e-3, "batch_size": 64})
    line = _one_error_line(
        capsys, ["patch", str(changed), "--resume"], "different config (finetune.lr: 0.001 there, 0.005 now"
    )
    assert "and 2 more fields" in line  # warmup_steps and max_steps went back to their defaults
    assert (tmp_path / "run" / "config.yaml").read_bytes() == stored


# ----------------------------------------------------------------------------- disk full and torn lines


def _dev_full() -> str:
    """A device whose every write fails with ENOSPC (Linux); only ever opened for appending."""
    import stat

    if not (Path("/dev/full").exists() and stat.S_ISCHR(Path("/dev/full").stat().st_mode)):
        pytest.skip("no /dev/full on this system")
    return "/dev/full"


def test_a_full_disk_in_an_append_names_the_file():
    with pytest.raises(OSError) as e:
        append_jsonl(_dev_full(), {"a": 1})
    assert e.value.errno == errno.ENOSPC and e.value.filename == "/dev/full"


def test_a_full_disk_under_safetensors_becomes_an_oserror_naming_the_output(tmp_path):
    from safetensors import SafetensorError

    # The message safetensors raises when the disk fills up under save_file / save_pretrained.
    full = "Error while serializing: I/O error: No space left on device (os error 28)"
    with pytest.raises(OSError) as e:
        with atomic_path(tmp_path / "model") as tmp:
            tmp.mkdir()
            (tmp / "model.safetensors").write_bytes(b"partial")
            raise SafetensorError(full)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_cli_turns_an_oserror_into_one_line_naming_the_path(monkeypatch, tmp_path, capsys):
    results = tmp_path / "run" / "results.jsonl"

    dev_full = _dev_full()

    def full_disk(args):  # what a full disk raises from the results append
        append_jsonl(dev_full, {"a": 1})

    monkeypatch.setattr("paint.commands.evaluate.run", full_disk)
    line = _one_error_line(capsys, ["eval", "--task", "digits"], "/dev/full: No space left on device; free some space")
    assert line.startswith("paint eval: error:")

    def not_a_directory(args):  # an OSError raised anywhere else keeps its path too
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(results))

    monkeypatch.setattr("paint.commands.evaluate.run", not_a_directory)
    _one_error_line(capsys, ["eval", "--task", "digits"], f"{results}: Not a directory")


def test_a_torn_last_line_is_ended_before_the_next_append(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    key = ResultKey("m", 0.5, "digits", "val")
    ResultsStore(path).put(key, {"accuracy": 0.5, "loss": 1.0, "n": 10})
    with open(path, "a") as f:
        f.write('{"model": "m", "alpha": 1.0, "task": "dig')  # killed mid-write (or the disk filled up)
    with caplog.at_level(logging.WARNING):
        store = ResultsStore(path)
    assert store.skipped == 1 and "skipped 1 unreadable line(s)" in caplog.text
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1
    store.put(ResultKey("m", 1.0, "digits", "val"), {"accuracy": 0.9, "loss": 0.2, "n": 10})
    again = ResultsStore(path)
    assert again.get(ResultKey("m", 1.0, "digits", "val"))["accuracy"] == 0.9  # not glued to the fragment
    assert again.get(key)["accuracy"] == 0.5
    assert len(read_jsonl(path)) == 2 and len(path.read_text().splitlines()) == 2  # the fragment was removed on open


def test_records_without_their_key_fields_are_skipped_not_fatal(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"model": "m"}) + "\n" + json.dumps([1, 2]) + "\n")
    store = ResultsStore(path)
    assert store.records() == [] and store.skipped == 2


def test_a_full_disk_while_preprocessing_names_the_cache_file(tmp_path, monkeypatch):
    """The preprocessing disk-full error once named no path (a write into the memory-mapped cache)."""
    import numpy as np

    from paint.cli import describe_os_error
    from paint.data import image_cache

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write into a full disk raises: no filename

    monkeypatch.setattr(image_cache, "_fill", full_disk)
    path = tmp_path / "cache" / "digits-32px-x.npy"
    path.parent.mkdir()
    with pytest.raises(OSError) as e:
        image_cache.cached_images(path, 4, 8, lambda i: np.zeros((3, 8, 8), np.uint8), {"identity": "digits"})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert describe_os_error(e.value).startswith(f"{path}: No space left on device; free some space")
    assert list(path.parent.iterdir()) == []  # no half-written cache left behind

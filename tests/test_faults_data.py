"""Faults in data and stored results (issue 26): a damaged ``.npy`` header, torn or edited results
lines, a one-class task, CSV errors that name the folder, bad ``paint eval`` flags, and what eval
says about small splits and about tasks given by path."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from paint.cli import main
from paint.data import image_cache
from paint.data.image_cache import cache_path
from paint.data.preprocess import ImageSpec, preprocess_split
from paint.data.readers import read_csv_list
from paint.data.readers.benchmarks import read_gtsrb
from paint.data.registry import load_task
from paint.data.spec import TaskSpec
from paint.data.task import ArraySplit
from paint.errors import PaintError
from paint.evaluation.results import ResultKey, ResultsStore, metrics_from_logits
from paint.utils import append_jsonl, read_jsonl

SPEC = ImageSpec(16, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
TEMPLATE = "a photo of the {}."


def _one_error_line(capsys, argv: list[str], message: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def _images(root: Path, counts: dict[str, int]) -> list[Path]:
    """``counts[c]`` small PNGs under ``root/c/``; returns their paths."""
    rng = np.random.default_rng(0)
    out = []
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            out.append(root / cls / f"{i}.png")
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(out[-1])
    return out


# ----------------------------------------------------------------------------- 1. the image cache's .npy header


class CountingSplit:
    """An ArraySplit that records which images were decoded."""

    def __init__(self, n: int = 8, identity: str = "test/header"):
        rng = np.random.default_rng(3)
        self.inner = ArraySplit(rng.integers(0, 256, size=(n, 20, 24, 3), dtype=np.uint8), np.arange(n) % 2, identity)
        self.identity, self.labels, self.calls = identity, self.inner.labels, []

    def __len__(self) -> int:
        return len(self.inner)

    def image(self, i: int):
        self.calls.append(i)
        return self.inner.image(i)


@pytest.fixture
def fresh_memo(monkeypatch):
    monkeypatch.setattr(image_cache, "_VERIFIED", {})  # as a new process would see the cache


def _header_length(path: Path) -> int:
    raw = path.read_bytes()
    return 10 + int.from_bytes(raw[8:10], "little")  # .npy 1.0: magic (6), version (2), header length (2)


def test_a_flipped_byte_in_the_npy_header_is_detected_and_the_entry_rebuilt(tmp_path, caplog, fresh_memo):
    split = CountingSplit()
    truth = preprocess_split(split, SPEC, cache_dir=tmp_path).clone()
    path = cache_path(tmp_path, split.identity, SPEC.resize, SPEC.crop)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"'shape': (") + len(b"'shape': ")
    raw[at] ^= 0x01  # "(" -> ")": NumPy's header parser ends in tokenize.TokenError
    path.write_bytes(bytes(raw))
    image_cache._VERIFIED.clear()
    split.calls.clear()
    with caplog.at_level(logging.WARNING, logger="paint.data"):
        again = preprocess_split(split, SPEC, cache_dir=tmp_path)
    assert torch.equal(again, truth)
    assert sorted(split.calls) == list(range(8)), "the damaged entry is decoded again"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "paint.data"]
    assert f"cache {path}: not a readable .npy (TokenError" in line and line.endswith("rebuilding it")


def test_no_single_bit_flip_in_the_npy_header_escapes_as_an_exception(tmp_path, fresh_memo):
    split = CountingSplit()
    preprocess_split(split, SPEC, cache_dir=tmp_path)
    path = cache_path(tmp_path, split.identity, SPEC.resize, SPEC.crop)
    good = path.read_bytes()
    refused = 0
    for i in range(_header_length(path)):
        for bit in range(8):
            damaged = bytearray(good)
            damaged[i] ^= 1 << bit
            path.write_bytes(bytes(damaged))
            arr, _, why = image_cache._open(path, len(split), SPEC.crop)  # never raises: a reason or an array
            assert (arr is None) == bool(why)
            refused += arr is None
            del arr
    assert refused > 900  # most flips break the header; the few that parse are checked row by row


# ----------------------------------------------------------------------------- 2. results.jsonl


KEY = ResultKey("m", 0.5, "digits", "val")


def test_a_torn_results_line_is_removed_from_the_file_on_open(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    ResultsStore(path).put(KEY, {"accuracy": 0.5, "loss": 1.0, "n": 10})
    with open(path, "a") as f:
        f.write('{"model": "m", "alpha": 1.0, "task": "dig')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        store = ResultsStore(path)
    assert store.skipped == 1 and "skipped 1 unreadable line(s)" in caplog.text and "rewritten" in caplog.text
    assert path.read_text() == json.dumps(read_jsonl(path)[0], sort_keys=True) + "\n", "the torn line stayed"
    assert not list(tmp_path.glob(".paint-tmp*")), "the rewrite is atomic and leaves nothing behind"
    store.put(ResultKey("m", 0.0, "digits", "val"), {"accuracy": 0.4, "loss": 1.2, "n": 10})
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(isinstance(json.loads(line), dict) for line in lines)
    assert [r["alpha"] for r in read_jsonl(path)] == [0.5, 0.0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = ResultsStore(path)
    assert again.skipped == 0 and not caplog.records
    assert again.get(KEY)["accuracy"] == 0.5


def test_new_records_carry_a_sha256_of_their_canonical_json(tmp_path):
    path = tmp_path / "results.jsonl"
    metrics = metrics_from_logits(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), [0, 1, 1])
    rec = ResultsStore(path).put(KEY, metrics)
    (stored,) = read_jsonl(path)
    rest = {k: v for k, v in stored.items() if k != "checksum"}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    assert stored["checksum"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert rest == rec and "checksum" not in rec
    assert ResultsStore(path).get(KEY) == rec  # the per-image bits read back intact


def _edit_accuracy(line: str) -> str:
    return line.replace('"accuracy": 0.5', '"accuracy": 0.9')


def _flip_a_bit_of_correct(line: str) -> str:
    rec = json.loads(line)
    bits = bytearray(base64.b64decode(rec["correct"]))
    bits[0] ^= 0x80  # image 0 now counts as wrong
    return line.replace(rec["correct"], base64.b64encode(bytes(bits)).decode())


@pytest.mark.parametrize("damage", [_edit_accuracy, _flip_a_bit_of_correct])
def test_a_record_failing_its_checksum_is_dropped_and_measured_again(tmp_path, caplog, damage):
    path = tmp_path / "results.jsonl"
    store = ResultsStore(path)
    store.put(KEY, {"accuracy": 0.5, "loss": 1.0, "n": 3, "correct": base64.b64encode(b"\xe0").decode()})
    other = ResultKey("m", 1.0, "digits", "val")
    store.put(other, {"accuracy": 0.7, "loss": 0.8, "n": 3})
    first, second = path.read_text().splitlines()
    damaged = damage(first)
    assert damaged != first and json.loads(damaged)  # still well-formed JSON
    path.write_text(damaged + "\n" + second + "\n")
    with caplog.at_level(logging.WARNING):
        store = ResultsStore(path)
    assert store.get(KEY) is None, "an edited record was trusted"
    assert store.get(other)["accuracy"] == 0.7 and store.mismatched == 1
    assert "skipped 1 record(s) failing their checksum" in caplog.text
    assert path.read_text().splitlines() == [second]


def test_records_written_before_checksums_existed_are_accepted(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    old = {"model": "m", "alpha": 0.5, "task": "digits", "split": "val", "accuracy": 0.5, "loss": 1.0, "n": 10}
    path.write_text(json.dumps(old, sort_keys=True) + "\n")
    with caplog.at_level(logging.WARNING):
        store = ResultsStore(path)
    assert store.get(KEY) == old and store.skipped == 0 and not caplog.records
    assert read_jsonl(path) == [old]  # left as it was


# ----------------------------------------------------------------------------- 3. a task with one class


def test_a_task_with_one_class_is_refused_naming_it(tiny_clip_dir, tmp_path, capsys):
    solo = tmp_path / "solo"
    _images(solo, {"cat": 6})
    base = ["eval", "--model", str(tiny_clip_dir), "--template", TEMPLATE, "--threads", "1"]
    _one_error_line(capsys, base + ["--task", str(solo)], "task 'solo' has only one class ('cat')")
    csv = tmp_path / "solo.csv"
    csv.write_text("".join(f"{p},cat\n" for p in sorted(solo.rglob("*.png"))))
    with pytest.raises(PaintError, match=r"^task 'listed' has only one class \('cat'\); zero-shot classification"):
        load_task(TaskSpec(name="listed", source="csv", path=str(csv)))


# ----------------------------------------------------------------------------- 4. CSV errors name the CSV


@pytest.mark.parametrize(
    ("text", "classnames", "message"),
    [
        ("a.png,5\n", ["cat", "dog"], "label 5 is outside the 2 class names"),
        ("a.png,-1\n", ["cat", "dog"], "label -1 is outside the 2 class names"),
        ("missing.png,cat\na.png,dog\n", None, "(all rows): 1 of 2 images are unreadable"),
        ("a.png,cat,train\na.png,dog\n", None, "row 2: no split, but other rows give one"),
        ("a.png,cat,holdout\n", None, "row 1: split 'holdout' must be train, val or test"),
        ("a.png\n", None, "row 1: every row needs path,label"),
        ("a.png,\u00b2\n", ["cat", "dog"], "label '\u00b2' is not one of the 2 class names"),
    ],
)
def test_every_csv_list_error_names_the_csv_file(tmp_path, text, classnames, message):
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "a.png")
    csv = tmp_path / "list.csv"
    csv.write_text(text, encoding="utf-8")
    with pytest.raises(PaintError, match=r"^" + str(csv).replace("\\", "\\\\")) as err:
        read_csv_list(csv, classnames, max_bad=0.0)
    assert message in str(err.value)


def test_a_csv_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys):
    csv = tmp_path / "pets.csv"
    csv.write_bytes("caf\u00e9.png,cat\n".encode("latin-1"))
    with pytest.raises(PaintError, match=r"pets\.csv: not UTF-8 text \(byte 0xe9 at offset 3\)"):
        read_csv_list(csv)


def test_gtsrb_test_csv_errors_name_the_csv(tmp_path):
    train = tmp_path / "GTSRB" / "Final_Training" / "Images" / "00000"
    train.mkdir(parents=True)
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(train / "0.ppm")
    (tmp_path / "GTSRB" / "Final_Test" / "Images").mkdir(parents=True)
    gt = tmp_path / "GT-final_test.csv"
    entry = {"layout": "GTSRB/...", "classnames": [str(i) for i in range(43)]}
    gt.write_text("Filename;ClassId\n00000.ppm;seven\n")
    with pytest.raises(PaintError, match=rf"^{gt} row 1: ClassId 'seven' is not an integer"):
        read_gtsrb(tmp_path, entry)
    gt.write_text("Filename;ClassId\n00000.ppm;7\n")
    with pytest.raises(PaintError, match=rf"^gtsrb/test listed in {gt}: 1 of 1 images are unreadable"):
        read_gtsrb(tmp_path, entry, 0.0)


# ----------------------------------------------------------------------------- 5. paint eval's numeric flags


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "--batch-size: input should be greater than or equal to 1, got 0"),
        (["--batch-size", "-4"], "--batch-size: input should be greater than or equal to 1, got -4"),
        (["--batch-size", str(10**30)], "--batch-size: must be an integer of at most 9223372036854775807"),
        (["--limit", "0"], "--limit: input should be greater than or equal to 1, got 0"),
        (["--limit", str(10**30)], "--limit: must be an integer of at most 9223372036854775807"),
    ],
)
def test_eval_numeric_flags_are_validated_like_their_config_fields(tiny_clip_dir, tmp_path, capsys, flags, message):
    pets = tmp_path / "pets"
    _images(pets, {"cat": 3, "dog": 3})
    argv = ["eval", "--model", str(tiny_clip_dir), "--task", str(pets), "--template", TEMPLATE, "--split", "train"]
    _one_error_line(capsys, argv + flags + ["--threads", "1"], message)


# ----------------------------------------------------------------------------- 6. what eval reports


def test_eval_does_not_warn_that_alpha_is_chosen_on_noise(tiny_clip_dir, tmp_path, capsys, caplog):
    pets = tmp_path / "pets"
    _images(pets, {"cat": 4, "dog": 4})  # no splits on disk: val (1 image) is held out of train
    with caplog.at_level(logging.WARNING, logger="paint.data"):
        load_task(TaskSpec(name="pets", source="folder", path=str(pets)))
    assert "alpha is chosen on noise" in caplog.text  # a patch run is still warned
    caplog.clear()
    argv = ["eval", "--model", str(tiny_clip_dir), "--task", str(pets), "--template", TEMPLATE, "--threads", "1"]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert "alpha is chosen on noise" not in caplog.text + capsys.readouterr().err


def test_eval_report_says_a_csv_task_named_like_a_builtin_is_not_the_builtin(tiny_clip_dir, tmp_path, capsys):
    files = _images(tmp_path / "img", {"cat": 4, "dog": 4})
    csv = tmp_path / "shapes.csv"
    csv.write_text("".join(f"{p},{p.parent.name},test\n" for p in files))
    report = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_clip_dir), "--task", str(csv), "--task", "digits", "--limit", "6"]
    assert main(argv + ["--template", TEMPLATE, "--out", str(report), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"- shapes: CSV file {csv} (not the built-in 'shapes')" in out
    assert "- digits: built-in task" in out
    saved = json.loads((report / "eval.json").read_text())["tasks"]
    assert saved["shapes"]["source"] == "csv" and saved["digits"]["source"] == "builtin"
    assert "not the built-in" in saved["shapes"]["origin"] and "not the built-in" not in saved["digits"]["origin"]
    assert f"- shapes: CSV file {csv} (not the built-in 'shapes')" in (report / "eval.md").read_text()


def test_append_jsonl_still_ends_a_torn_line_for_files_no_store_repairs(tmp_path):
    # ResultsStore now repairs its file on open; other JSONL files (logs) rely on append_jsonl alone
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"b": ')
    append_jsonl(path, {"c": 3})
    assert path.read_text().splitlines()[-1] == '{"c": 3}' and read_jsonl(path) == [{"a": 1}, {"c": 3}]

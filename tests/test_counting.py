"""Counting: held-out counts never reach fine-tuning or alpha selection; the workflow's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from paint.errors import PaintError
from paint.studies.counting import (
    class_counts,
    counting_splits,
    heldout_kinds,
    per_count_accuracy,
    seen_mask,
)
from paint.world.tasks import world_task


@pytest.fixture(scope="module")
def counting_task():
    return world_task("counting", seed=0, sizes={"train": 200, "val": 60, "test": 100})


def test_heldout_counts_never_leak_into_finetuning_or_selection(counting_task):
    counts = class_counts(counting_task)
    assert counts == list(range(1, 11))
    for heldout in ([5, 10], [1], [3, 4, 9], [2, 7]):
        splits = counting_splits(counting_task, counts, heldout)
        held_classes = {counts.index(c) for c in heldout}
        for name in ("train", "val"):  # what fine-tuning and alpha selection may see
            labels = set(np.asarray(splits[name].labels).tolist())
            assert labels and not labels & held_classes, (heldout, name)
            # Every seen image of the original split is kept: nothing else is dropped.
            original = np.asarray(counting_task.split(name).labels)
            assert len(splits[name]) == int(np.sum(~np.isin(original, list(held_classes))))
        test = np.asarray(counting_task.split("test").labels)
        sizes = len(splits["test-seen"]) + sum(len(splits[f"test-{c}"]) for c in heldout)
        assert sizes == len(test)  # the test partitions cover the test split exactly once
        for c in heldout:
            assert set(np.asarray(splits[f"test-{c}"].labels).tolist()) == {counts.index(c)}
            assert set(np.asarray(splits[f"val-{c}"].labels).tolist()) == {counts.index(c)}
        # The images are the task's own (a held-out image is never relabelled as a seen one).
        s = splits["train"]
        assert np.array_equal(np.asarray(s.image(0)), np.asarray(counting_task.split("train").image(int(s.indices[0]))))


def test_heldout_kinds_and_errors():
    counts = list(range(1, 11))
    assert heldout_kinds(counts, [5, 10]) == {5: "interpolation", 10: "extrapolation"}
    assert heldout_kinds(counts, [1, 6]) == {1: "extrapolation", 6: "interpolation"}
    with pytest.raises(PaintError, match="held-out count 11 is not a class"):
        heldout_kinds(counts, [11])
    with pytest.raises(PaintError, match="at least two seen counts"):
        heldout_kinds(counts, counts[:-1])  # one seen count is not enough to fine-tune
    assert seen_mask(np.array([0, 4, 9, 3]), counts, [5, 10]).tolist() == [True, False, False, True]


def test_per_count_accuracy():
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [3.0, 0, 0], [0, 0, 3.0]])
    labels = np.array([0, 1, 1, 2])
    assert per_count_accuracy(logits, labels, [2, 4, 6]) == {2: 1.0, 4: 0.5, 6: 1.0}


def test_counting_workflow_trains_only_on_seen_counts(tmp_path, tiny_clip_dir, monkeypatch):
    import paint.pipeline.operation as op
    from paint.cli import main

    seen_labels = []
    real = op.finetune  # the one fine-tuning call of every workflow (the patch operation)

    def spy(model, sets, *args, **kwargs):
        seen_labels.extend(int(v) for s in sets for v in np.asarray(s.labels))
        return real(model, sets, *args, **kwargs)

    monkeypatch.setattr(op, "finetune", spy)
    cfg = {
        "model": str(tiny_clip_dir),
        "output_dir": str(tmp_path / "run"),
        "heldout": [5, 10],
        "support_tasks": ["shapes"],
        "max_train": 60,
        "max_eval": 40,
        "selection": {"alphas": [0.0, 0.5, 1.0]},
        "finetune": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "warmup_steps": 1},
    }
    path = tmp_path / "counting.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["counting", str(path)]) == 0
    assert seen_labels and not set(seen_labels) & {4, 9}  # classes of 5 and 10 objects
    run = tmp_path / "run"
    for name in ("config.yaml", "results.jsonl", "summary.json", "summary.md", "counting.png"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["heldout"] == {"5": "interpolation", "10": "extrapolation"}
    assert summary["selection"]["patching"] == ["counting/seen"] and summary["selection"]["support"] == ["shapes"]
    assert summary["sizes"]["train"] == 60
    for label in ("zeroshot", "patched", "finetuned"):
        row = summary["test"][label]
        assert set(row["heldout"]) == {"5", "10"} and "shapes" in row["support"]
    # Held-out validation images appear only as report-only curves, never in the selection.
    assert any("report only" in n for n in summary["sweep"][0]["val"])
    assert main(["counting", str(path), "--heldout", "11", "--output-dir", str(tmp_path / "run2")]) == 2
    assert not (tmp_path / "run2").exists()  # user errors are caught before any output is written


def test_counting_config_rejects_duplicates(tmp_path):
    from paint.config import parse_config
    from paint.studies.counting import CountingConfig

    with pytest.raises(PaintError, match="heldout lists a count twice"):
        parse_config(CountingConfig, {"output_dir": str(tmp_path), "heldout": [5, 5]})
    with pytest.raises(PaintError, match="must all differ"):
        parse_config(CountingConfig, {"output_dir": str(tmp_path), "support_tasks": ["shapes", "shapes"]})
    with pytest.raises(PaintError, match="must all differ"):
        parse_config(CountingConfig, {"output_dir": str(tmp_path), "support_tasks": ["counting"]})


def test_counting_rule_flags_and_seeds(tmp_path, tiny_clip_dir, capsys):
    """--rule / --constraint map to the selection config (they once sent refused top-level keys); seeds repeat."""
    from paint.cli import main

    cfg = {
        "model": str(tiny_clip_dir),
        "output_dir": str(tmp_path / "run"),
        "support_tasks": ["shapes"],
        "max_train": 40,
        "max_eval": 30,
        "selection": {"alphas": [0.0, 0.5, 1.0]},
        "finetune": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "warmup_steps": 1},
        "seeds": 2,
    }
    path = tmp_path / "counting.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["counting", str(path), "--rule", "mean", "--constraint", "each"]) == 0
    run = tmp_path / "run"
    for s in (0, 1):
        one = yaml.safe_load((run / f"seed-{s}" / "config.yaml").read_text())
        assert one["selection"]["objective"] == "mean_accuracy" and one["selection"]["constraint"] == "each"
        assert one["seed"] == s and one["finetune"]["seed"] == s and one["task"]["split_seed"] == s
    summary = json.loads((run / "summary.json").read_text())
    per_seed = [json.loads((run / f"seed-{s}" / "summary.json").read_text()) for s in (0, 1)]
    assert summary["seeds"] == [0, 1] and summary["alphas"] == [p["alpha"] for p in per_seed]
    seen = summary["test"]["patched"]["seen"]
    assert seen["n"] == 2 and seen["mean"] == pytest.approx(np.mean([p["test"]["patched"]["seen"] for p in per_seed]))
    assert "mean ± the 95% Student-t" in (run / "summary.md").read_text()
    assert "over seeds [0, 1]" in capsys.readouterr().out

"""Linear-probe triage: the probe, the k-shot draws, PAINT's decision rule, and ``paint triage``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from paint.studies.probe import fit_logistic_probe, kshot_indices, triage_decision, triage_features


def _blobs(n_per_class: int, n_classes: int = 5, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around well-separated centres: linearly separable in practice."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0, 1, (n_classes, dim)) * 4.0
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(0, 0.5, (len(y), dim)), y


def test_linear_probe_recovers_a_linearly_separable_task():
    xtr, ytr = _blobs(40, seed=0)
    xva, yva = _blobs(10, seed=1)
    xte, yte = _blobs(30, seed=2)
    probe, c, scores = fit_logistic_probe(xtr, ytr, xva, yva, cs=[1e-3, 1e-1, 10.0])
    assert probe.score(xte, yte) >= 0.98
    assert c in (1e-3, 1e-1, 10.0) and set(scores) == {1e-3, 1e-1, 10.0}
    assert scores[c] == max(scores.values())


def test_triage_rule_is_papers_definition():
    assert triage_decision(0.75, 0.50) == "patch"  # +25 points
    assert triage_decision(0.60, 0.50) == "support"  # exactly 10 points is not "more than 10"
    assert triage_decision(0.6001, 0.50) == "patch"
    assert triage_decision(0.90, 0.95) == "support"  # zero-shot better than the probe
    assert triage_decision(0.70, 0.50, threshold_points=25) == "support"


def test_kshot_indices_draw_k_per_class_deterministically():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
    idx = kshot_indices(labels, 4, seed=0)
    assert np.bincount(labels[idx]).tolist() == [4, 4, 2]  # a small class gives what it has
    assert np.array_equal(idx, kshot_indices(labels, 4, seed=0))
    assert not np.array_equal(idx, kshot_indices(labels, 4, seed=1))


def test_triage_labels_tasks_as_defined():
    feats, labels = {}, {}
    for split, (n, seed) in {"train": (30, 0), "val": (10, 1), "test": (20, 2)}.items():
        feats[split], labels[split] = _blobs(n, seed=seed)
    weak = triage_features(feats, labels, zeroshot_test=0.30, shots=[1, 4, 16], draws=2, cs=[0.1, 10.0])
    strong = triage_features(feats, labels, zeroshot_test=0.995, shots=[1], draws=1, cs=[0.1, 10.0])
    assert weak["decision"] == "patch" and weak["gap_points"] > 10
    assert strong["decision"] == "support"
    assert [p["k"] for p in weak["kshot"]] == [1, 4, 16]
    assert all(len(p["draws"]) == 2 for p in weak["kshot"])
    assert weak["kshot"][-1]["accuracy"] >= 0.9  # 16 shots of a separable task suffice


def test_triage_command_writes_outputs_and_resumes(tmp_path, tiny_clip_dir):
    from paint.cli import main

    out = tmp_path / "triage"
    args = [
        "triage",
        "--output-dir",
        str(out),
        "--model",
        str(tiny_clip_dir),
        "--task",
        "digits",
        "--task",
        "shapes",
        "--shots",
        "1",
        "2",
        "--draws",
        "1",
        "--max-train",
        "60",
        "--max-eval",
        "40",
    ]
    assert main(args) == 0
    for name in ("config.yaml", "results.jsonl", "triage.json", "triage.md", "kshot.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "triage.json").read_text())
    assert set(summary["tasks"]) == {"digits", "shapes"}
    for r in summary["tasks"].values():
        assert r["decision"] == ("patch" if r["probe"] - r["zeroshot"] > 0.10 else "support")
        assert r["sizes"] == {"train": 60, "val": 40, "test": 40}
    assert sorted(summary["patch"] + summary["support"]) == ["digits", "shapes"]
    assert yaml.safe_load((out / "config.yaml").read_text())["shots"] == [1, 2]
    assert main(args) == 2  # an existing run is not silently overwritten
    lines = (out / "results.jsonl").read_text().splitlines()
    assert main(args + ["--resume"]) == 0  # finished tasks are reused, not recomputed
    assert (out / "results.jsonl").read_text().splitlines() == lines
    assert main(args[:-2] + ["--max-eval", "30", "--resume"]) == 2  # a different config is refused


def test_triage_config_validation(tmp_path):
    from paint.config import parse_config
    from paint.errors import PaintError
    from paint.studies.triage import TriageConfig

    cfg = parse_config(TriageConfig, {"output_dir": str(tmp_path), "shots": [4, 1, 4]})
    assert cfg.shots == [1, 4]
    with pytest.raises(PaintError, match="every k in shots must be at least 1"):
        parse_config(TriageConfig, {"output_dir": str(tmp_path), "shots": [0]})
    with pytest.raises(PaintError, match="positive regularisation strengths"):
        parse_config(TriageConfig, {"output_dir": str(tmp_path), "cs": [-1.0]})


def test_triage_refuses_an_unknown_task_before_writing_anything(tmp_path, tiny_clip_dir):
    from paint.cli import main

    out = tmp_path / "triage"
    assert main(["triage", "--output-dir", str(out), "--model", str(tiny_clip_dir), "--task", "no-such-task"]) == 2
    assert not out.exists()

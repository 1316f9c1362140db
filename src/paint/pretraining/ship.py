"""Shipping a pretrained world model: copy it into the package with a ``BUILD.json`` of how it was made."""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from paint.config import load_config
from paint.data.builtin import digits_task
from paint.data.preprocess import preprocess_split
from paint.evaluation.results import evaluate_split
from paint.models.clip import load_clip
from paint.models.heads import build_head
from paint.pretraining.build import PretrainConfig
from paint.pretraining.run import zero_shot
from paint.utils import atomic_path, read_jsonl
from paint.world.corpus import GENERATOR_VERSION, KIND_WEIGHTS, KINDS
from paint.world.tasks import SUPPORT_TASKS, WORLD_TASKS


def machine_record() -> dict[str, Any]:
    """What a rebuild needs to know about the machine and library versions."""

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available(),
    }


def ship(
    run_dir: str | Path,
    dest: str | Path,
    command: str,
    golden_limit: int = 200,
    notes: str = "",
    test_limit: int | None = None,
    config_file: str = "configs/pretrain-default.yaml",
) -> dict[str, Any]:
    """Copy a finished run's model to ``dest`` with a ``BUILD.json`` describing how it was made.

    ``BUILD.json`` holds the command, the resolved config, seed, corpus size, steps, wall time,
    machine, and the zero-shot accuracies measured on every world task's full test split and
    on scikit-learn's digits; ``golden`` repeats the support tasks on their first
    ``golden_limit`` test images, which the test suite must reproduce. ``test_limit`` (tests
    only) measures the first images of each test split instead of all of them.
    """
    run = Path(run_dir)
    cfg = load_config(PretrainConfig, run / "config.yaml")
    # The checkpoint's step matches model/ (both are written at every epoch end), so a run
    # that was cut short ships honestly too.
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    log = read_jsonl(run / "log.jsonl")
    bundle = load_clip(str(run / "model"))
    model, tok, proc = bundle.model, bundle.tokenizer, bundle.processor
    full = zero_shot(model, tok, proc, list(WORLD_TASKS), split="test", limit=test_limit)
    full["digits"] = _sklearn_digits_zero_shot(bundle)
    golden = zero_shot(model, tok, proc, list(SUPPORT_TASKS), split="test", limit=golden_limit)
    record = build_record(cfg, state, log, full, golden, golden_limit, command, config_file, test_limit, notes)
    out = Path(dest)
    with atomic_path(out) as tmp:
        shutil.copytree(run / "model", tmp)
        (tmp / "BUILD.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def build_record(
    cfg: PretrainConfig,
    state: dict[str, Any],
    log: list[dict[str, Any]],
    full: dict[str, float],
    golden: dict[str, float],
    golden_limit: int,
    command: str,
    config_file: str,
    test_limit: int | None,
    notes: str,
) -> dict[str, Any]:
    """``BUILD.json``: command, config, corpus, steps, machine, zero-shot accuracies, golden values, history."""
    steps = int(state["step"])
    return {
        "command": command,
        "config_file": config_file,
        "config": cfg.model_dump(mode="json"),
        "seed": cfg.seed,
        "corpus": {
            "generator_version": GENERATOR_VERSION,
            "pairs_seen": steps * cfg.batch_size,
            "distinct_pairs": steps * cfg.batch_size,  # pair i is used once: step s draws pairs s*B .. s*B+B-1
            "kinds": dict(zip(KINDS, KIND_WEIGHTS)),
            "tokenizer_captions": cfg.tokenizer_captions,
        },
        "steps": steps,
        "finished": bool(state.get("done")),
        "wall_time_s": log[-1]["wall_s"] if log else None,
        "machine": machine_record(),
        "zero_shot_test": {k: round(v, 2) for k, v in full.items()},
        "zero_shot_test_images": test_limit or "all (world tasks 1000 each, digits 600)",
        "support_mean_test": round(float(np.mean([full[t] for t in SUPPORT_TASKS])), 2),
        "golden": {"split": "test", "limit": golden_limit, "accuracy": {k: round(v, 2) for k, v in golden.items()}},
        "history": log,
        "notes": notes,
    }


def _sklearn_digits_zero_shot(bundle) -> float:
    """Zero-shot accuracy (percent) on paint's scikit-learn digits test split (the patching task)."""
    task, _ = digits_task()
    split = task.split("test")
    head = build_head(bundle, task.classnames, task.templates)
    images = preprocess_split(split, bundle.spec)
    return 100.0 * evaluate_split(bundle.model, head, images, split.labels, bundle.spec)["accuracy"]

"""Linear-probe triage: which tasks need patching, and how zero-shot compares with few-shot.

PAINT calls a task a *patching task* when a linear probe on the frozen image features
beats the zero-shot classifier by more than 10 accuracy points, and a *supported task*
otherwise. For every task this module

1. extracts L2-normalised image features (the ones the zero-shot head scores) once per split;
2. measures zero-shot accuracy on the test split from the same features;
3. fits a scikit-learn logistic-regression probe for each regularisation strength ``C`` of a
   grid, picks ``C`` on the validation split, refits on train + validation with that ``C``
   (as CLIP's linear-probe protocol does) and measures test accuracy;
4. draws k examples per class from the training split (k = 1, 2, 4, 8, 16; several seeded
   draws), fits a probe (``C`` again chosen on validation) and measures test accuracy: the
   few-shot curve of the CLIP paper's zero-shot vs few-shot comparison.

Outputs (in the run directory): ``config.yaml`` (resolved), ``results.jsonl`` (one record
per task, appended as each finishes, so ``--resume`` skips finished tasks), ``triage.json``,
``triage.md`` (a table) and ``kshot.png`` (one panel per task).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from paint.config import NumWorkers, StrictModel, ThreadsSetting
from paint.data.builtin import builtin_task_names
from paint.data.preprocess import ImageSpec, normalize, preprocess_split
from paint.data.registry import load_task
from paint.data.spec import TaskSpec
from paint.data.task import SubsetSplit
from paint.errors import PaintError
from paint.models.clip import image_features, load_clip
from paint.models.heads import zeroshot_head
from paint.pipeline.run import run_fingerprint
from paint.pipeline.rundir import RunDir, run_scope
from paint.plotting import new_figure, save_figure
from paint.progress import progress as tqdm
from paint.studies.probe import DEFAULT_CS, DEFAULT_SHOTS, triage_features, zeroshot_accuracy
from paint.utils import (
    append_jsonl,
    hash_tensors,
    read_jsonl,
    seed_everything,
    write_json_atomic,
    write_text_atomic,
)


class TriageConfig(StrictModel):
    """What ``paint triage`` runs.

    ``tasks`` empty means every built-in task (scikit-learn digits and the world's tasks).
    ``threshold`` is in accuracy points: probe - zero-shot > threshold -> "patch".
    """

    model: str = "paint:default"
    output_dir: str
    tasks: list[TaskSpec] = Field(default_factory=list)
    shots: list[int] = Field(default_factory=lambda: list(DEFAULT_SHOTS))
    draws: int = Field(3, ge=1)
    cs: list[float] = Field(default_factory=lambda: list(DEFAULT_CS))
    threshold: float = Field(10.0, ge=0.0)
    max_train: int | None = Field(None, ge=1)
    max_eval: int | None = Field(None, ge=1)
    max_iter: int = Field(2000, ge=10)
    batch_size: int = Field(256, ge=1)
    cache_dir: str | None = None
    seed: int = 0
    threads: ThreadsSetting = "auto"  # torch CPU threads (paint.runtime); read by the CLI at start
    num_workers: NumWorkers = None  # threads decoding images (paint.data.parallel); None: automatic

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError("every k in shots must be at least 1")
        return sorted(set(v))

    @field_validator("cs")
    @classmethod
    def _positive_cs(cls, v: list[float]) -> list[float]:
        if not v or any(c <= 0 for c in v):
            raise ValueError("cs must be a non-empty list of positive regularisation strengths")
        return list(v)


# --------------------------------------------------------------------------- pure pieces


@torch.inference_mode()
def extract_features(
    model: torch.nn.Module, images: torch.Tensor, spec: ImageSpec, batch_size: int = 256, desc: str = "features"
) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) of uint8 images (N, 3, S, S), with a progress bar."""

    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
        batch = normalize(torch.as_tensor(images[i : i + batch_size]).to(device), spec.mean, spec.std)
        out.append(F.normalize(image_features(model, batch).float(), dim=-1).cpu())  # (B, D)
    return torch.cat(out) if out else torch.empty(0, 0)


def triage_table(results: dict[str, dict[str, Any]], shots: Sequence[int], threshold: float) -> str:
    """Markdown: task, zero-shot, probe, gap, decision, then the k-shot accuracies."""
    head = ["task", "zero-shot", "linear probe", "probe - zero-shot", "decision"] + [f"{k}-shot" for k in shots]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, r in results.items():
        ks = {p["k"]: p for p in r["kshot"]}
        cells = [
            task,
            f"{100 * r['zeroshot']:.1f}",
            f"{100 * r['probe']:.1f}",
            f"{r['gap_points']:+.1f}",
            f"**{r['decision']}**",
        ] + [f"{100 * ks[k]['accuracy']:.1f}" if k in ks else "-" for k in shots]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Decision rule (PAINT): linear probe beats zero-shot by more than {threshold:g} points -> patch, else support. "
        "Accuracies in %, test split; probe C chosen on validation; k-shot = mean over draws."
    )
    return "\n".join(lines)


def plot_kshot(results: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """One panel per task: k-shot probe accuracy against k (log2), zero-shot and full probe as lines."""

    n = max(1, len(results))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = new_figure(rows, cols, figsize=(3.2 * cols, 2.8 * rows), dpi=110, squeeze=False)
    for ax, (task, r) in zip(axes.ravel(), results.items()):
        ks = [p["k"] for p in r["kshot"]]
        acc = np.array([100 * p["accuracy"] for p in r["kshot"]])
        std = np.array([100 * p["std"] for p in r["kshot"]])
        ax.plot(ks, acc, "-o", color="tab:blue", markersize=3, label="k-shot probe")
        ax.fill_between(ks, acc - std, acc + std, color="tab:blue", alpha=0.15)
        ax.axhline(100 * r["zeroshot"], color="tab:red", linestyle="--", label="zero-shot")
        ax.axhline(100 * r["probe"], color="tab:gray", linestyle=":", label="full probe")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylim(0, 101)
        ax.set_title(f"{task}: {r['decision']}", fontsize=9)
        ax.set_xlabel("examples per class", fontsize=8)
        ax.set_ylabel("test accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(results) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Linear-probe triage: few-shot probes vs zero-shot", fontsize=10)

    return save_figure(fig, path)


# --------------------------------------------------------------------------- the workflow


def resolve_tasks(cfg: TriageConfig) -> TriageConfig:
    """Fill an empty task list with every built-in task (so the written config is explicit)."""
    if cfg.tasks:
        return cfg

    return cfg.model_copy(update={"tasks": [TaskSpec(name=n) for n in builtin_task_names()]})


def fingerprint_parts(bundle) -> dict[str, str]:
    """Short content hashes of the model's text side and image tower (recorded with results)."""

    return {"text": bundle.text_identity[:16], "image_tower": hash_tensors(bundle.image_tower_state())[:16]}


def _fingerprint(cfg: TriageConfig, bundle) -> str:
    """Identity of a run's inputs: the config and both towers of the model."""
    ids = fingerprint_parts(bundle)
    return run_fingerprint("triage-v1", cfg, ids["text"], ids["image_tower"])[:16]


def _task_features(bundle, task, cfg: TriageConfig) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """Features and labels of train/val/test, and zero-shot test accuracy, for one task."""

    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    feats, labels = {}, {}
    for split in ("train", "val", "test"):
        s = task.split(split)
        cap = cfg.max_train if split == "train" else cfg.max_eval
        if cap is not None and len(s) > cap:
            # A seeded subset for demo-sized runs (labels stay aligned: SubsetSplit indexes both).
            keep = np.sort(np.random.default_rng([cfg.seed, len(s)]).choice(len(s), size=cap, replace=False))
            s = SubsetSplit(s, keep, f"{s.identity}/cap{cap}-{cfg.seed}")
        y = np.asarray(s.labels)
        images = preprocess_split(
            s, bundle.spec, cache_dir=cache / "images" if cache else None, progress=True, num_workers=cfg.num_workers
        )
        feats[split] = extract_features(
            bundle.model, images, bundle.spec, cfg.batch_size, desc=f"{task.name}/{split}"
        ).numpy()
        labels[split] = y
    head = zeroshot_head(bundle, task.classnames, task.templates, cache_dir=cache)
    zs = zeroshot_accuracy(torch.from_numpy(feats["test"]), head, labels["test"])
    return feats, labels, zs


@run_scope
def run_triage(cfg: TriageConfig, resume: bool = False) -> dict[str, Any]:
    """Triage every task of ``cfg``; write config, JSONL, JSON, Markdown and the plot to ``output_dir``.

    Args:
        cfg: the run's settings.
        resume: reuse tasks already finished in ``output_dir/results.jsonl`` by the same config
            and model (without it, an existing results file is refused).
    """

    cfg = resolve_tasks(cfg)
    out = Path(cfg.output_dir)
    results_path = out / "results.jsonl"
    if results_path.exists() and not resume:
        raise PaintError(f"{results_path} exists; pass --resume to continue that run or choose a new output directory")
    seed_everything(cfg.seed)
    bundle = load_clip(cfg.model)
    fingerprint = _fingerprint(cfg, bundle)
    done: dict[str, dict[str, Any]] = {}
    for rec in read_jsonl(results_path):
        if rec.get("fingerprint") != fingerprint:
            raise PaintError(f"{results_path} was written by a different config or model; use a new output directory")
        done[rec["task"]] = rec["result"]

    tasks = []
    for spec in cfg.tasks:  # every task is checked before any output is written
        task, _ = load_task(spec)
        for split in ("train", "val", "test"):
            task.split(split)
        tasks.append((spec, task))
    RunDir(out, "triage.json").start(cfg, resume)

    results: dict[str, dict[str, Any]] = {}
    for spec, task in tqdm(tasks, desc="triage"):
        if spec.name in done:
            results[spec.name] = done[spec.name]
            continue
        feats, labels, zs = _task_features(bundle, task, cfg)
        r = triage_features(feats, labels, zs, cfg.shots, cfg.draws, cfg.cs, cfg.threshold, cfg.max_iter, cfg.seed)
        append_jsonl(results_path, {"task": spec.name, "fingerprint": fingerprint, "result": r})
        results[spec.name] = r

    summary = {
        "model": cfg.model,
        "model_identity": fingerprint_parts(bundle),
        "threshold_points": cfg.threshold,
        "rule": f"probe - zero-shot > {cfg.threshold:g} points -> patch, else support (PAINT)",
        "patch": [t for t, r in results.items() if r["decision"] == "patch"],
        "support": [t for t, r in results.items() if r["decision"] == "support"],
        "tasks": results,
    }
    write_json_atomic(out / "triage.json", summary)
    write_text_atomic(
        out / "triage.md", "# Linear-probe triage\n\n" + triage_table(results, cfg.shots, cfg.threshold) + "\n"
    )
    plot_kshot(results, out / "kshot.png")
    return summary

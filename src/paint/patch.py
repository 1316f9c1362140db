"""``paint patch``: PAINT end to end on any Hugging Face CLIP checkpoint.

fine-tune the image tower on the patching task(s) with the zero-shot heads frozen
-> sweep alpha on validation splits -> choose alpha -> evaluate test splits at the chosen
alpha (and at 0 and 1) -> write the patched HF checkpoint, results, resolved config,
Markdown summary, ``summary.json`` and the trade-off plot.

Only theta_zs (the base model) and theta_ft (``finetune/checkpoint/trainable.safetensors``)
are kept on disk; any theta_alpha is rebuilt from them (``paint interpolate``).
Every evaluation goes to ``results.jsonl``; with ``--resume`` a run continues where it
stopped (training from its last epoch checkpoint, the sweep from its last result).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from paint.config import CachedRun, StrictModel, ThreadsSetting, dump_config, first_duplicate
from paint.data.preprocess import ImageSpec, preprocess_split
from paint.data.spec import TaskSpec
from paint.errors import PaintError
from paint.evaluate import ResultKey, ResultsStore, evaluate_split
from paint.models.clip import DEFAULT_MODEL, ClipBundle, load_clip, save_clip
from paint.search import SearchConfig
from paint.select import rule_key, select_candidates
from paint.train.finetune import FinetuneConfig, TrainingSet, finetune
from paint.utils import hash_tensors, sha256_strings, write_json_atomic
from paint.weights.ops import interpolate

DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
SUMMARY = "summary.json"


class SweepConfig(StrictModel):
    """Alphas evaluated on the validation splits (0 and 1 are always included)."""

    alphas: list[float] = Field(default_factory=lambda: list(DEFAULT_ALPHAS), min_length=1)
    allow_extrapolation: bool = False

    @model_validator(mode="after")
    def _range(self):
        if not self.allow_extrapolation:
            bad = [a for a in self.alphas if not 0.0 <= a <= 1.0]
            if bad:
                raise ValueError(f"alpha {bad[0]} is outside [0, 1]; set sweep.allow_extrapolation: true to extrapolate")
        return self

    def points(self) -> list[float]:
        return sorted({0.0, 1.0, *(float(a) for a in self.alphas)})


class SelectionConfig(StrictModel):
    """How alpha is chosen from the validation sweep (both rules are always reported)."""

    rule: Literal["mean", "constrained"] = "mean"
    epsilon: float = Field(1.0, ge=0, description="allowed support drop, accuracy points (constrained rule)")
    constraint: Literal["each", "mean"] = Field("each", description="bound every support task, or their mean")


class PatchConfig(CachedRun, StrictModel):
    """Everything ``paint patch`` needs; written back resolved as ``config.yaml``.

    One patching task: fine-tune, sweep (or ``search``), choose, test. Several patching tasks:
    the paper's multi-task modes (``modes``: joint, sequential, parallel), compared in a table
    (see :mod:`paint.multitask`).
    """

    model: str = DEFAULT_MODEL
    revision: str | None = None
    output_dir: str
    patch_tasks: list[TaskSpec] = Field(min_length=1)
    support_tasks: list[TaskSpec] = Field(default_factory=list)
    modes: list[Literal["joint", "sequential", "parallel"]] = Field(
        default_factory=lambda: ["joint"], min_length=1, description="multi-task modes, used with several patch_tasks"
    )
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    search: SearchConfig | None = Field(
        None, description="choose alpha with a search strategy (fewer evaluations) instead of the full sweep"
    )
    eval_batch_size: int = Field(256, ge=1)
    cache_dir: str | None = None  # preprocessed images and heads; default: <output_dir>/cache
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: ThreadsSetting = "auto"  # torch CPU threads (paint.runtime); read by the CLI at start

    @field_validator("modes")
    @classmethod
    def _distinct_modes(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("a mode is listed twice")
        return v

    def effective_search(self) -> SearchConfig:
        """The search that several-task modes use: ``search``, or the sweep + selection as a grid."""
        if self.search is not None:
            return self.search
        objective = "constrained" if self.selection.rule == "constrained" else "mean_accuracy"
        grid = [a for a in self.sweep.points() if 0.0 <= a <= 1.0]
        return SearchConfig(strategy="grid", objective=objective, budget=len(grid) + 1, epsilon=self.selection.epsilon,
                            constraint=self.selection.constraint, grid=grid)

    @model_validator(mode="after")
    def _unique(self):
        names = [t.name for t in self.patch_tasks + self.support_tasks]
        dup = first_duplicate(names)
        if dup:
            raise ValueError(f"task {dup!r} is listed twice")
        return self


@dataclass
class PreparedTask:
    """A task ready to evaluate: preprocessed images per split, labels, frozen head."""

    name: str
    role: str  # "patch" | "support"
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    images: dict[str, torch.Tensor]  # split -> uint8 (N, 3, S, S)
    labels: dict[str, np.ndarray]
    identities: dict[str, str]
    head: torch.Tensor  # (C, D)
    split_info: dict[str, Any]


def pick_device(name: str) -> torch.device:
    """The device for this process: under ``accelerate launch`` each rank gets its own GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PaintError("device: cuda was asked for but no CUDA GPU is visible")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    from accelerate import PartialState

    return PartialState().device


def load_tasks(specs: Sequence[TaskSpec], role: str) -> list[tuple[str, Any, dict]]:
    """Build every task and check its splits before any output is written."""
    from paint.data.registry import load_task

    out = []
    for spec in specs:
        task, info = load_task(spec)
        for split in (("train", "val", "test") if role == "patch" else ("val", "test")):
            task.split(split)  # raises on a missing or empty split, or labels outside the classes
        out.append((role, task, info))
    return out


def prepare(
    bundle: ClipBundle, loaded: Sequence[tuple[str, Any, dict]], cache_dir: Path, batch_size: int
) -> list[PreparedTask]:
    """Preprocess (cached) and build heads (cached) for every task."""
    from paint.models.heads import zeroshot_head
    from paint.progress import progress

    prepared = []
    for role, task, info in progress(loaded, desc="prepare tasks (preprocess images, zero-shot heads)", unit="task"):
        splits = ("train", "val", "test") if role == "patch" else ("val", "test")
        images, labels, ids = {}, {}, {}
        for s in splits:
            split = task.split(s)
            images[s] = preprocess_split(split, bundle.spec, cache_dir=cache_dir / "images", progress=True)
            labels[s] = np.asarray(split.labels)
            ids[s] = split.identity
        head = zeroshot_head(bundle, task.classnames, task.templates, cache_dir=cache_dir, batch_size=batch_size)
        prepared.append(PreparedTask(task.name, role, task.classnames, task.templates, images, labels, ids, head, info))
    return prepared


def check_output_dir(out: Path, resume: bool) -> None:
    """Refuse to overwrite a finished run, or to silently restart an unfinished one."""
    if not out.exists() or not any(out.iterdir()):
        return
    if resume:
        return
    if (out / SUMMARY).exists():
        raise PaintError(f"{out} already holds a finished run; choose a new output_dir (or pass --resume to redo its reports)")
    raise PaintError(f"{out} holds an unfinished run; pass --resume to continue it, or choose a new output_dir")


def evaluate_at(
    model: torch.nn.Module,
    theta_zs: dict[str, torch.Tensor],
    theta_ft: dict[str, torch.Tensor],
    alpha: float,
    tasks: Sequence[PreparedTask],
    split: str,
    store: ResultsStore,
    model_id: str,
    spec: ImageSpec,
    batch_size: int,
    allow_extrapolation: bool = False,
) -> dict[str, dict[str, float]]:
    """Metrics per task at theta_alpha; results already in ``store`` are not recomputed."""
    out, loaded = {}, False
    for t in tasks:
        key = ResultKey(model_id, alpha, t.name, split)
        rec = store.get(key)
        if rec is None:
            if not loaded:
                state = interpolate(theta_zs, theta_ft, alpha, allow_extrapolation=allow_extrapolation)
                model.load_state_dict(state, strict=False)
                loaded = True
            rec = store.put(key, evaluate_split(model, t.head, t.images[split], t.labels[split], spec, batch_size))
        out[t.name] = {"accuracy": rec["accuracy"], "loss": rec["loss"], "n": rec["n"]}
    return out


def run_fingerprint(cfg: PatchConfig, bundle: ClipBundle, tasks: Sequence[PreparedTask]) -> str:
    patch = [t for t in tasks if t.role == "patch"]
    parts = [bundle.text_identity, hash_tensors(bundle.image_tower_state()), cfg.finetune.model_dump_json()]
    for t in patch:
        parts += [t.name, t.identities["train"], *t.classnames, *t.templates]
    return sha256_strings(parts)


def run_patch(cfg: PatchConfig, resume: bool = False) -> dict[str, Any]:
    """Run PAINT as configured; return the summary (also written to ``summary.json``)."""
    if len(cfg.patch_tasks) > 1:
        return run_patch_multitask(cfg, resume)
    t_start = time.time()
    out = Path(cfg.output_dir)
    check_output_dir(out, resume)
    # Everything a user can get wrong is checked before the output directory is created.
    loaded = load_tasks(cfg.patch_tasks, "patch") + load_tasks(cfg.support_tasks, "support")
    bundle = load_clip(cfg.model, cfg.revision, device=pick_device(cfg.device))

    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    tasks = prepare(bundle, loaded, cfg.cache_path, cfg.eval_batch_size)
    patch = [t for t in tasks if t.role == "patch"]
    support = [t for t in tasks if t.role == "support"]
    model, spec = bundle.model, bundle.spec

    theta_zs = bundle.image_tower_copy()
    fp = run_fingerprint(cfg, bundle, tasks)
    t_ft = time.time()
    sets = [TrainingSet(t.name, t.images["train"], t.labels["train"], t.head) for t in patch]
    fit_result = finetune(model, sets, spec, cfg.finetune, out / "finetune", resume=resume, fingerprint=fp)
    t_ft = time.time() - t_ft
    from accelerate import PartialState

    proc = PartialState()
    if not proc.is_main_process:  # multi-process fine-tuning: rank 0 alone sweeps and writes
        proc.wait_for_everyone()
        return {}
    theta_ft = bundle.image_tower_copy()
    model_id = interpolation_id(theta_zs, theta_ft)

    store = ResultsStore(out / "results.jsonl")
    names_p, names_s = [t.name for t in patch], [t.name for t in support]
    t_sweep = time.time()
    if cfg.search is None:
        sweep, search_info = grid_sweep(cfg, model, theta_zs, theta_ft, tasks, store, model_id, spec), None
    else:
        sweep, search_info = searched_points(cfg.search, model, theta_zs, theta_ft, tasks, store, model_id, spec, cfg.eval_batch_size)
    t_sweep = time.time() - t_sweep
    eps = cfg.selection.epsilon
    selections = select_candidates(sweep, names_p, names_s, eps)
    if search_info is not None:
        chosen_rule, chosen = f"search:{cfg.search.strategy}/{cfg.search.objective}", search_info["alpha"]
    else:
        chosen_rule = rule_key(cfg.selection.rule, cfg.selection.constraint)
        chosen = selections[chosen_rule]["alpha"]

    test_at = {}
    for label, alpha in (("zeroshot", 0.0), ("finetuned", 1.0), ("patched", chosen)):
        test_at[label] = evaluate_at(model, theta_zs, theta_ft, alpha, tasks, "test", store, model_id, spec, cfg.eval_batch_size, True)
    test = {
        t.name: {"role": t.role, **{label: test_at[label][t.name]["accuracy"] for label in test_at}} for t in tasks
    }

    # The patched checkpoint: the base model's tensors with the image tower at theta_chosen.
    patched = interpolate(theta_zs, theta_ft, chosen, allow_extrapolation=True)
    full_state = dict(model.state_dict())
    full_state.update(patched)
    model.load_state_dict(patched, strict=False)

    summary: dict[str, Any] = {
        "alpha": chosen,
        "sweep": sweep,
        "test": test,
        "selection": {"rule": chosen_rule, "epsilon": eps, "candidates": selections, "search": search_info},
        "model": cfg.model,
        "patch_tasks": names_p,
        "support_tasks": names_s,
        "splits": {t.name: t.split_info for t in tasks},
        "finetune": {"history": fit_result.history, "steps": fit_result.steps, "resumed_from_epoch": fit_result.resumed_from_epoch},
        "timing_s": {"finetune": round(t_ft, 2), "sweep": round(t_sweep, 2), "total": round(time.time() - t_start, 2)},
        "outputs": {"model": "model", "results": "results.jsonl", "config": "config.yaml", "plot": "tradeoff.png", "report": "summary.md"},
    }
    write_reports(out, summary, bundle, full_state)
    proc.wait_for_everyone()
    return summary


def grid_sweep(
    cfg: PatchConfig,
    model: torch.nn.Module,
    theta_zs: dict[str, torch.Tensor],
    theta_ft: dict[str, torch.Tensor],
    tasks: Sequence[PreparedTask],
    store: ResultsStore,
    model_id: str,
    spec: ImageSpec,
) -> list[dict[str, Any]]:
    """Validation metrics at every alpha of the sweep (the paper's grid)."""

    return sweep_alphas(cfg.sweep.points(), model, theta_zs, theta_ft, tasks, store, model_id, spec, cfg.eval_batch_size, cfg.sweep.allow_extrapolation)


def sweep_alphas(
    alphas: Sequence[float],
    model: torch.nn.Module,
    theta_zs: dict[str, torch.Tensor],
    theta_ft: dict[str, torch.Tensor],
    tasks: Sequence[PreparedTask],
    store: ResultsStore,
    model_id: str,
    spec: ImageSpec,
    batch_size: int,
    allow_extrapolation: bool = False,
) -> list[dict[str, Any]]:
    """Validation accuracy and loss of every task at each alpha, in order (with a progress bar)."""
    from paint.progress import progress as tqdm

    sweep = []
    for alpha in tqdm(alphas, desc="alpha sweep (val)"):
        metrics = evaluate_at(model, theta_zs, theta_ft, alpha, tasks, "val", store, model_id, spec, batch_size, allow_extrapolation)
        sweep.append(sweep_point(alpha, metrics))
    return sweep


def interpolation_id(theta_zs: dict[str, torch.Tensor], theta_ft: dict[str, torch.Tensor]) -> str:
    """The results-store key of the line between two image towers."""
    return f"{hash_tensors(theta_zs)[:16]}-{hash_tensors(theta_ft)[:16]}"


def sweep_point(alpha: float, metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {
        "alpha": float(alpha),
        "val": {n: m["accuracy"] for n, m in metrics.items()},
        "val_loss": {n: m["loss"] for n, m in metrics.items()},
    }


def searched_points(
    search: SearchConfig,
    model: torch.nn.Module,
    theta_zs: dict[str, torch.Tensor],
    theta_ft: dict[str, torch.Tensor],
    tasks: Sequence[PreparedTask],
    store: ResultsStore,
    model_id: str,
    spec: ImageSpec,
    batch_size: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Choose alpha with a search strategy; return the evaluated points (sorted) and the search record."""
    from paint.line import line_measure
    from paint.search import evaluator_for, run_search

    measure = line_measure(model, theta_zs, theta_ft, tasks, spec, "val", batch_size, store, model_id)
    patch = [t.name for t in tasks if t.role == "patch"]
    support = [t.name for t in tasks if t.role == "support"]
    from paint.progress import counter, ticking

    with counter(f"alpha search ({search.strategy})", total=search.budget) as bar:
        result = run_search(evaluator_for(search, ticking(measure, bar), patch, support), search)
    points = {e.alpha: sweep_point(e.alpha, e.metrics) for e in result.evaluations}
    if 0.0 not in points:  # the zero-shot reference is always measured; keep it in the table
        points[0.0] = sweep_point(0.0, measure(0.0, False))
    info = {k: v for k, v in result.to_dict().items() if k != "evaluations"}
    info["alphas_evaluated"] = [e.alpha for e in result.evaluations]
    return [points[a] for a in sorted(points)], info


def run_patch_multitask(cfg: PatchConfig, resume: bool) -> dict[str, Any]:
    """Several patching tasks: run the configured modes of :mod:`paint.multitask`, compare them."""
    from paint.multitask import MultitaskConfig, run_multitask

    mt = MultitaskConfig(
        model=cfg.model,
        revision=cfg.revision,
        output_dir=cfg.output_dir,
        patch_tasks=cfg.patch_tasks,
        support_tasks=cfg.support_tasks,
        modes=cfg.modes,
        finetune=cfg.finetune,
        search=cfg.effective_search(),
        eval_batch_size=cfg.eval_batch_size,
        cache_dir=cfg.cache_dir,
        device=cfg.device,
    )
    return run_multitask(mt, resume=resume)


def write_reports(out: Path, summary: dict[str, Any], bundle: ClipBundle, state: dict[str, torch.Tensor]) -> None:
    """Checkpoint with model card, plot, Markdown summary; ``summary.json`` last (it marks a finished run)."""
    from paint.report import (
        model_card,
        plot_tradeoff,
        points,
        sweep_table,
        test_table,
        write_markdown,
    )

    config_yaml = (out / "config.yaml").read_text()
    save_clip(bundle, out / "model", state_dict=state)
    write_markdown(out / "model" / "README.md", model_card(summary, config_yaml))
    patch, support = summary["patch_tasks"], summary["support_tasks"]
    plot_tradeoff(summary["sweep"], patch, support, out / "tradeoff.png", chosen=summary["alpha"])
    cands = summary["selection"]["candidates"]
    text = "\n".join(
        [
            f"# PAINT: patching {', '.join(patch)}",
            "",
            f"Model `{summary['model']}`; chosen alpha **{summary['alpha']:.3g}** by the `{summary['selection']['rule']}` rule "
            f"on validation. All rules (support within {points(summary['selection']['epsilon'])} for the constrained ones): "
            + ", ".join(f"`{name}` {c['alpha']:.3g}" for name, c in cands.items())
            + ".",
            "",
            "## Test accuracy (%)",
            "",
            test_table(summary["test"]),
            "",
            "## Validation sweep (accuracy %)",
            "",
            sweep_table(summary["sweep"], patch + support, summary["alpha"]),
            "",
            "![trade-off](tradeoff.png)",
            "",
        ]
    )
    write_markdown(out / "summary.md", text)
    write_json_atomic(out / SUMMARY, json.loads(json.dumps(summary, default=float)))

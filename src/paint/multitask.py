"""Patching several tasks at once: the PAINT paper's joint, sequential and parallel modes.

- ``joint``: fine-tune once on the union of the patching tasks, each sample scored against its
  own task's frozen head; choose one alpha on the line theta_zs -> theta_joint.
- ``sequential``: patch task i on top of the patch for task i - 1: fine-tune from theta_{i-1}
  on task i, choose alpha_i on the line theta_{i-1} -> theta_ft_i (objective over the tasks
  patched so far), theta_i = the chosen point.
- ``parallel``: fine-tune each task from theta_zs, then theta = theta_zs + sum_i alpha_i tau_i
  with tau_i = theta_i - theta_zs; the alpha vector is searched coordinate by coordinate with
  the configured scalar strategy (``parallel_sweeps`` passes), each coordinate a line search.

Every alpha is chosen on validation splits by :mod:`paint.search`; the reference of every
objective (zero-shot accuracy and loss) is theta_zs, whatever line is searched. With one
patching task the three modes are single-task PAINT. Test accuracies of each mode's final
weights are compared in ``comparison.md`` / ``comparison.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from paint.config import CachedRun, StrictModel, ThreadsSetting, dump_config, first_duplicate
from paint.data.preprocess import ImageSpec
from paint.data.spec import TaskSpec
from paint.evaluate import ResultsStore
from paint.models.clip import DEFAULT_MODEL
from paint.search import (
    SearchConfig,
    SearchResult,
    TaskMetrics,
    evaluator_for,
    run_search,
)
from paint.train.finetune import FinetuneConfig, TrainingSet, finetune
from paint.utils import hash_tensors, write_json_atomic, write_text_atomic

Mode = Literal["joint", "sequential", "parallel"]
MODES: tuple[str, ...] = ("joint", "sequential", "parallel")
StateDict = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- context and pieces


@dataclass
class PatchContext:
    """What every mode shares: the model, its preprocessing, prepared tasks, theta_zs, settings.

    ``tasks`` are :class:`paint.patch.PreparedTask` (role ``patch`` or ``support``).
    """

    model: torch.nn.Module
    spec: ImageSpec
    tasks: list
    theta_zs: StateDict
    search: SearchConfig
    finetune: FinetuneConfig
    store: ResultsStore
    batch_size: int = 256
    out_dir: Path | None = None
    resume: bool = False
    fingerprint: str = ""
    _reference: TaskMetrics | None = field(default=None, repr=False)

    @property
    def patch_names(self) -> list[str]:
        return [t.name for t in self.tasks if t.role == "patch"]

    @property
    def support_names(self) -> list[str]:
        return [t.name for t in self.tasks if t.role == "support"]

    def task(self, name: str):
        return next(t for t in self.tasks if t.name == name)

    def reference(self) -> TaskMetrics:
        """Validation metrics of theta_zs on every task (measured once, stored)."""
        if self._reference is None:
            self._reference = evaluate_state(self, self.theta_zs, "val")
        return self._reference


def state_id(theta: StateDict) -> str:
    return hash_tensors(theta)[:16]


def evaluate_state(ctx: PatchContext, theta: StateDict, split: str) -> TaskMetrics:
    """Metrics of the image tower ``theta`` on ``split`` of every task (cached in the store)."""
    from paint.patch import evaluate_at

    return evaluate_at(ctx.model, theta, theta, 0.0, ctx.tasks, split, ctx.store, f"state-{state_id(theta)}", ctx.spec, ctx.batch_size)


def finetune_from(ctx: PatchContext, theta_start: StateDict, patch: Sequence[str], tag: str) -> StateDict:
    """Fine-tune the image tower from ``theta_start`` on the named tasks jointly; return theta_ft."""
    from paint.line import set_image_tower

    set_image_tower(ctx.model, theta_start)
    sets = [TrainingSet(n, ctx.task(n).images["train"], ctx.task(n).labels["train"], ctx.task(n).head) for n in patch]
    out = ctx.out_dir / tag if ctx.out_dir is not None else None
    fp = f"{ctx.fingerprint}/{tag}/{state_id(theta_start)}"
    finetune(ctx.model, sets, ctx.spec, ctx.finetune, out, resume=ctx.resume, fingerprint=fp)
    state = ctx.model.state_dict()
    return {k: state[k].detach().clone() for k in theta_start}


def choose_on_line(ctx: PatchContext, theta_a: StateDict, theta_b: StateDict, patch: Sequence[str], tag: str = "") -> SearchResult:
    """Search alpha on theta_a -> theta_b with the configured strategy, referenced to theta_zs."""
    from paint.line import line_measure

    model_id = f"{tag}{state_id(theta_a)}-{state_id(theta_b)}"
    measure = line_measure(ctx.model, theta_a, theta_b, ctx.tasks, ctx.spec, "val", ctx.batch_size, ctx.store, model_id)
    from paint.progress import counter, ticking

    with counter(f"alpha search ({ctx.search.strategy}{', ' + tag.rstrip('-:/') if tag else ''})", total=ctx.search.budget) as bar:
        ev = evaluator_for(ctx.search, ticking(measure, bar), patch, ctx.support_names, reference=ctx.reference())
        return run_search(ev, ctx.search)


@dataclass
class ModeResult:
    """A mode's final weights, its alphas and every search it ran."""

    mode: str
    theta: StateDict
    alphas: list[float]
    searches: list[SearchResult]
    n_finetunes: int
    seconds: float = 0.0

    @property
    def n_model_evals(self) -> int:
        return sum(s.n_model_evals for s in self.searches)


# ----------------------------------------------------------------------------- the three modes


def patch_joint(ctx: PatchContext) -> ModeResult:
    """One fine-tune on the union of the patching tasks, one alpha."""
    from paint.line import line_point

    patch = ctx.patch_names
    theta_ft = finetune_from(ctx, ctx.theta_zs, patch, "joint/finetune")
    res = choose_on_line(ctx, ctx.theta_zs, theta_ft, patch, "joint/")
    return ModeResult("joint", line_point(ctx.theta_zs, theta_ft, res.alpha), [res.alpha], [res], 1)


def patch_sequential(ctx: PatchContext) -> ModeResult:
    """Patch each task on top of the previous patch, choosing alpha at each step."""
    from paint.line import line_point

    theta = ctx.theta_zs
    alphas, searches = [], []
    patch = ctx.patch_names
    for i, name in enumerate(patch):
        theta_ft = finetune_from(ctx, theta, [name], f"sequential/{i}-{name}/finetune")
        res = choose_on_line(ctx, theta, theta_ft, patch[: i + 1], f"sequential/{i}/")
        theta = line_point(theta, theta_ft, res.alpha)
        alphas.append(res.alpha)
        searches.append(res)
    return ModeResult("sequential", theta, alphas, searches, len(patch))


def parallel_line(theta_zs: StateDict, thetas: Sequence[StateDict], alphas: Sequence[float], i: int) -> tuple[StateDict, StateDict]:
    """The line along coordinate i: (theta with alpha_i = 0, theta with alpha_i = 1).

    When every other alpha is 0 the line is exactly theta_zs -> theta_i (no rounding), so
    parallel patching of one task reproduces single-task patching bit for bit.
    """
    from paint.weights.ops import add_task_vectors, task_vector

    others = [(j, a) for j, a in enumerate(alphas) if j != i and a != 0.0]
    if not others:
        return theta_zs, thetas[i]
    taus = [task_vector(theta_zs, thetas[j]) for j, _ in others]
    base = add_task_vectors(theta_zs, taus, [a for _, a in others])
    end = add_task_vectors(base, [task_vector(theta_zs, thetas[i])], [1.0])
    return base, end


def parallel_merge(theta_zs: StateDict, thetas: Sequence[StateDict], alphas: Sequence[float]) -> StateDict:
    """theta_zs + sum_i alpha_i (theta_i - theta_zs)."""
    from paint.weights.ops import add_task_vectors, task_vector

    return add_task_vectors(theta_zs, [task_vector(theta_zs, t) for t in thetas], list(alphas))


def search_parallel(ctx: PatchContext, thetas: Sequence[StateDict], sweeps: int = 1) -> tuple[list[float], list[SearchResult], StateDict]:
    """Coordinate-wise search of the alpha vector; returns (alphas, searches, final theta)."""
    from paint.line import line_point

    patch = ctx.patch_names
    alphas = [0.0] * len(thetas)
    searches: list[SearchResult] = []
    theta = ctx.theta_zs
    for s in range(sweeps):
        for i in range(len(thetas)):
            base, end = parallel_line(ctx.theta_zs, thetas, alphas, i)
            res = choose_on_line(ctx, base, end, patch, f"parallel/{s}/{i}/")
            alphas[i] = res.alpha
            searches.append(res)
            theta = line_point(base, end, res.alpha)  # = parallel_merge(...) up to rounding
    return alphas, searches, theta


def patch_parallel(ctx: PatchContext, sweeps: int = 1) -> ModeResult:
    """Fine-tune each task from theta_zs; search the alpha vector of their task vectors."""
    patch = ctx.patch_names
    thetas = [finetune_from(ctx, ctx.theta_zs, [n], f"parallel/{i}-{n}/finetune") for i, n in enumerate(patch)]
    alphas, searches, theta = search_parallel(ctx, thetas, sweeps)
    return ModeResult("parallel", theta, alphas, searches, len(patch))


def run_mode(ctx: PatchContext, mode: str, parallel_sweeps: int = 1) -> ModeResult:
    t0 = time.time()
    if mode == "joint":
        r = patch_joint(ctx)
    elif mode == "sequential":
        r = patch_sequential(ctx)
    elif mode == "parallel":
        r = patch_parallel(ctx, parallel_sweeps)
    else:
        from paint.errors import PaintError

        raise PaintError(f"unknown multi-task mode {mode!r}; choose from: {', '.join(MODES)}")
    r.seconds = time.time() - t0
    return r


# ----------------------------------------------------------------------------- comparison


def comparison_rows(ctx: PatchContext, results: Sequence[ModeResult]) -> list[dict[str, Any]]:
    """One row per mode (and zero-shot): test accuracy per task, group means, costs."""
    import numpy as np

    zs = evaluate_state(ctx, ctx.theta_zs, "test")
    rows = []
    for label, theta, r in [("zero-shot", ctx.theta_zs, None)] + [(m.mode, m.theta, m) for m in results]:
        test = zs if r is None else evaluate_state(ctx, theta, "test")
        acc = {n: test[n]["accuracy"] for n in test}
        support = ctx.support_names
        rows.append(
            {
                "mode": label,
                "alphas": [] if r is None else r.alphas,
                "test": acc,
                "patch_mean": float(np.mean([acc[n] for n in ctx.patch_names])),
                "support_mean": float(np.mean([acc[n] for n in support])) if support else None,
                "worst_support_drop": float(min(acc[n] - zs[n]["accuracy"] for n in support)) if support else None,
                "finetunes": 0 if r is None else r.n_finetunes,
                "model_evals": 0 if r is None else r.n_model_evals,
                "seconds": 0.0 if r is None else round(r.seconds, 2),
            }
        )
    return rows


def comparison_markdown(rows: Sequence[dict[str, Any]], patch: Sequence[str], support: Sequence[str]) -> str:
    """Markdown table of the modes (accuracy in %, drop in points)."""

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    head = ["mode", "alphas", *patch, "patch mean", *support, "support mean", "worst support drop", "fine-tunes", "model evals"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        alphas = ", ".join(f"{a:.3g}" for a in r["alphas"]) or "-"
        drop = "-" if r["worst_support_drop"] is None else f"{100 * r['worst_support_drop']:+.1f}"
        cells = [r["mode"], alphas, *(pct(r["test"][n]) for n in patch), pct(r["patch_mean"]),
                 *(pct(r["test"][n]) for n in support), pct(r["support_mean"]), drop, str(r["finetunes"]), str(r["model_evals"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- config and entry point


class MultitaskConfig(CachedRun, StrictModel):
    """``paint multitask``: several patching tasks, one or more modes, a comparison table."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    output_dir: str
    patch_tasks: list[TaskSpec] = Field(min_length=1)
    support_tasks: list[TaskSpec] = Field(default_factory=list)
    modes: list[Mode] = Field(default_factory=lambda: list(MODES), min_length=1)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    parallel_sweeps: int = Field(1, ge=1, description="coordinate-search passes over the alpha vector")
    save_models: bool = Field(True, description="write each mode's patched HF checkpoint under <output_dir>/<mode>/model")
    eval_batch_size: int = Field(256, ge=1)
    cache_dir: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: ThreadsSetting = "auto"  # torch CPU threads (paint.runtime); read by the CLI at start

    @model_validator(mode="after")
    def _checks(self):
        names = [t.name for t in self.patch_tasks + self.support_tasks]
        dup = first_duplicate(names)
        if dup:
            raise ValueError(f"task {dup!r} is listed twice")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError("a mode is listed twice")
        return self


def build_context(
    cfg: Any, out: Path, resume: bool, patch_specs: Sequence[TaskSpec], support_specs: Sequence[TaskSpec]
) -> tuple[PatchContext, Any]:
    """Load model and tasks (checked before any output), write the resolved config, prepare tasks.

    ``cfg`` is a :class:`MultitaskConfig` or :class:`paint.transfer.TransferConfig` (model,
    revision, device, finetune, search, eval_batch_size, cache_path). Returns (context, bundle).
    """
    from paint.models.clip import load_clip
    from paint.patch import check_output_dir, load_tasks, pick_device, prepare
    from paint.utils import sha256_strings

    check_output_dir(out, resume)
    bundle = load_clip(cfg.model, cfg.revision, device=pick_device(cfg.device))
    loaded = load_tasks(patch_specs, "patch") + load_tasks(support_specs, "support")
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    tasks = prepare(bundle, loaded, cfg.cache_path, cfg.eval_batch_size)
    theta_zs = bundle.image_tower_copy()
    fp = sha256_strings([bundle.text_identity, hash_tensors(theta_zs), cfg.finetune.model_dump_json(),
                         *(f"{t.name}:{t.identities.get('train', '')}" for t in tasks)])
    ctx = PatchContext(bundle.model, bundle.spec, tasks, theta_zs, cfg.search, cfg.finetune,
                       ResultsStore(out / "results.jsonl"), cfg.eval_batch_size, out, resume, fp)
    return ctx, bundle


def run_multitask(cfg: MultitaskConfig, resume: bool = False) -> dict[str, Any]:
    """Run every configured mode; write comparison.md, comparison.json (last) and checkpoints."""
    from paint.models.clip import save_clip

    t0 = time.time()
    out = Path(cfg.output_dir)
    if (out / "comparison.json").exists() and not resume:
        from paint.errors import PaintError

        raise PaintError(f"{out} already holds a finished run; choose a new output_dir")
    ctx, bundle = build_context(cfg, out, resume, cfg.patch_tasks, cfg.support_tasks)
    results = [run_mode(ctx, m, cfg.parallel_sweeps) for m in cfg.modes]
    rows = comparison_rows(ctx, results)
    if cfg.save_models:
        full = bundle.model.state_dict()
        for r in results:
            save_clip(bundle, out / r.mode / "model", state_dict={**full, **r.theta})
    summary = {
        "model": cfg.model,
        "patch_tasks": ctx.patch_names,
        "support_tasks": ctx.support_names,
        "search": cfg.search.model_dump(mode="json"),
        "modes": {r.mode: {"alphas": r.alphas, "searches": [s.to_dict() for s in r.searches], "finetunes": r.n_finetunes,
                           "model_evals": r.n_model_evals, "seconds": round(r.seconds, 2)} for r in results},
        "comparison": rows,
        "timing_s": {"total": round(time.time() - t0, 2)},
    }
    table = comparison_markdown(rows, ctx.patch_names, ctx.support_names)
    header = (f"# Multi-task patching: {', '.join(ctx.patch_names)}\n\nTest accuracy (%); alphas chosen on validation "
              f"by `{cfg.search.strategy}` on `{cfg.search.objective}`.")
    write_text_atomic(out / "comparison.md", f"{header}\n\n{table}\n")
    write_json_atomic(out / "comparison.json", summary)
    summary["table"] = table
    return summary

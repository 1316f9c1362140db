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
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from paint.config import StrictModel, ThreadsSetting
from paint.data.preprocess import ImageSpec, normalize
from paint.data.spec import TaskSpec
from paint.errors import PaintError
from paint.pipeline.rundir import RunDir, run_scope
from paint.utils import (
    append_jsonl,
    read_jsonl,
    sha256_strings,
    write_json_atomic,
    write_text_atomic,
)

Decision = Literal["patch", "support"]

DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
DEFAULT_SHOTS: tuple[int, ...] = (1, 2, 4, 8, 16)


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


def triage_decision(probe_accuracy: float, zeroshot_accuracy: float, threshold_points: float = 10.0) -> Decision:
    """PAINT's rule: "patch" when the probe beats zero-shot by more than ``threshold_points``.

    Accuracies are fractions in [0, 1]; the threshold is in points (10 = ten percentage points).
    A gap of exactly the threshold is "support" (the paper says "more than").
    """
    gap_points = 100.0 * (float(probe_accuracy) - float(zeroshot_accuracy))
    return "patch" if gap_points > threshold_points + 1e-9 else "support"


def make_probe(c: float, max_iter: int = 2000, seed: int = 0):
    """A standardise-then-logistic-regression pipeline (multinomial, L2 penalty, lbfgs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))


def fit_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 2000,
    seed: int = 0,
    refit_on_val: bool = True,
) -> tuple[Any, float, dict[float, float]]:
    """Choose ``C`` on validation, then fit the final probe.

    Args:
        train_x: training features (N, D).
        train_y: training labels (N,).
        val_x: validation features (M, D).
        val_y: validation labels (M,).
        cs: regularisation strengths to try (larger = weaker regularisation).
        max_iter: lbfgs iterations.
        seed: solver seed.
        refit_on_val: refit on train + validation with the chosen ``C`` (full probes); k-shot
            probes keep to their k examples per class.

    Returns:
        (fitted probe, chosen C, validation accuracy per C). Ties go to the smaller C.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    if len(np.unique(train_y)) < 2:
        raise PaintError("a linear probe needs examples of at least two classes in the training split")
    scores: dict[float, float] = {}
    fitted: dict[float, Any] = {}
    # One BLAS thread: these problems are tiny, and multi-threaded BLAS on a busy machine
    # spends its time spinning (measured: 6 fits took 177 s with 2 threads, 15 s with 1).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in cs:
            probe = make_probe(c, max_iter, seed).fit(train_x, train_y)
            scores[float(c)] = float(probe.score(val_x, val_y))
            fitted[float(c)] = probe
        best = max(scores, key=lambda c: (scores[c], -c))
        if not refit_on_val:
            return fitted[best], best, scores
        final = make_probe(best, max_iter, seed).fit(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]))
    return final, best, scores


def kshot_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of ``k`` examples per class (all of a class that has fewer), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(chosen))


@torch.inference_mode()
def extract_features(
    model: torch.nn.Module, images: torch.Tensor, spec: ImageSpec, batch_size: int = 256, desc: str = "features"
) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) of uint8 images (N, 3, S, S), with a progress bar."""
    from paint.models.clip import image_features
    from paint.progress import progress as tqdm

    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
        batch = normalize(torch.as_tensor(images[i : i + batch_size]).to(device), spec.mean, spec.std)
        out.append(F.normalize(image_features(model, batch).float(), dim=-1).cpu())  # (B, D)
    return torch.cat(out) if out else torch.empty(0, 0)


def zeroshot_accuracy(features: torch.Tensor, head: torch.Tensor, labels: np.ndarray) -> float:
    """Accuracy of the zero-shot head (C, D) on normalised features (N, D)."""
    pred = (features @ head.t().float()).argmax(dim=1).numpy()  # (N,)
    return float((pred == np.asarray(labels)).mean())


def triage_features(
    feats: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    zeroshot_test: float,
    shots: Sequence[int] = DEFAULT_SHOTS,
    draws: int = 3,
    cs: Sequence[float] = DEFAULT_CS,
    threshold: float = 10.0,
    max_iter: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Triage one task from its features: full probe, decision and k-shot curve.

    Args:
        feats: split name ("train", "val", "test") -> features (N, D).
        labels: split name -> labels (N,).
        zeroshot_test: zero-shot test accuracy (fraction).
        shots: k values of the few-shot curve.
        draws: random k-shot draws per k (their mean and standard deviation are reported).
        cs: regularisation grid.
        threshold: decision threshold in points.
        max_iter: lbfgs iterations.
        seed: seed of the k-shot draws.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # see fit_probe: tiny problems, no BLAS threads
        return _triage_features(feats, labels, zeroshot_test, shots, draws, cs, threshold, max_iter, seed)


def _triage_features(feats, labels, zeroshot_test, shots, draws, cs, threshold, max_iter, seed) -> dict[str, Any]:
    probe, best_c, val_scores = fit_probe(
        feats["train"], labels["train"], feats["val"], labels["val"], cs, max_iter, seed
    )
    probe_test = float(probe.score(feats["test"], labels["test"]))
    curve = []
    for k in shots:
        accs, cs_chosen = [], []
        for d in range(draws):
            idx = kshot_indices(labels["train"], k, seed * 1000 + 97 * k + d)
            if len(np.unique(labels["train"][idx])) < 2:
                continue
            p, c, _ = fit_probe(
                feats["train"][idx],
                labels["train"][idx],
                feats["val"],
                labels["val"],
                cs,
                max_iter,
                seed,
                refit_on_val=False,
            )
            accs.append(float(p.score(feats["test"], labels["test"])))
            cs_chosen.append(c)
        curve.append(
            {
                "k": int(k),
                "accuracy": float(np.mean(accs)) if accs else float("nan"),
                "std": float(np.std(accs)) if accs else float("nan"),
                "draws": accs,
                "c": cs_chosen,
            }
        )
    return {
        "zeroshot": float(zeroshot_test),
        "probe": probe_test,
        "gap_points": 100.0 * (probe_test - zeroshot_test),
        "decision": triage_decision(probe_test, zeroshot_test, threshold),
        "c": best_c,
        "val_accuracy_per_c": {str(c): s for c, s in val_scores.items()},
        "kshot": curve,
        "sizes": {s: int(len(labels[s])) for s in ("train", "val", "test")},
    }


# --------------------------------------------------------------------------- reports


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
    from paint.plotting import new_figure

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
    from paint.plotting import save_figure

    return save_figure(fig, path)


# --------------------------------------------------------------------------- the workflow


def resolve_tasks(cfg: TriageConfig) -> TriageConfig:
    """Fill an empty task list with every built-in task (so the written config is explicit)."""
    if cfg.tasks:
        return cfg
    from paint.data.builtin import builtin_task_names

    return cfg.model_copy(update={"tasks": [TaskSpec(name=n) for n in builtin_task_names()]})


def fingerprint_parts(bundle) -> dict[str, str]:
    """Short content hashes of the model's text side and image tower (recorded with results)."""
    from paint.utils import hash_tensors

    return {"text": bundle.text_identity[:16], "image_tower": hash_tensors(bundle.image_tower_state())[:16]}


def _fingerprint(cfg: TriageConfig, bundle) -> str:
    """Identity of a run's inputs: the config and both towers of the model."""
    ids = fingerprint_parts(bundle)
    return sha256_strings(["triage-v1", ids["text"], ids["image_tower"], cfg.model_dump_json()])[:16]


def _task_features(bundle, task, cfg: TriageConfig) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """Features and labels of train/val/test, and zero-shot test accuracy, for one task."""
    from paint.data.preprocess import preprocess_split
    from paint.data.task import SubsetSplit
    from paint.models.heads import zeroshot_head

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
        images = preprocess_split(s, bundle.spec, cache_dir=cache / "images" if cache else None, progress=True)
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
    from paint.models.clip import load_clip
    from paint.progress import progress as tqdm
    from paint.utils import seed_everything

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
    from paint.data.registry import load_task

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

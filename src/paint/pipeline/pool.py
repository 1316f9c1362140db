"""The task pool: prepared tasks with their frozen heads, and the one way to evaluate a state on them.

Every workflow (``paint patch``, the multi-task modes, transfer, the case studies, the demo)
loads its tasks with :func:`load_tasks` (every check before any output is written), prepares
them with :func:`prepare_tasks` (preprocessed images and zero-shot heads, both cached on disk)
and evaluates image-tower states through a :class:`TaskPool`: ``pool.evaluate_line(line, alpha,
split)`` or ``pool.evaluate_state(theta, split)`` -> ``{task: {"accuracy", "loss", "n", "correct"}}``, each
result cached in the run's results store under (state or line id, alpha, task, split).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paint.data.preprocess import ImageSpec, preprocess_array
from paint.data.registry import load_task
from paint.data.spec import TaskSpec
from paint.errors import PaintError
from paint.evaluation.line import LossData, line_derivative, set_image_tower
from paint.evaluation.results import MemoryStore, ResultKey, ResultsStore, evaluate_split
from paint.models.clip import load_clip
from paint.models.heads import build_head, zeroshot_head
from paint.pipeline.run import finetune_configs, open_run
from paint.progress import progress
from paint.selection.margins import MARGIN
from paint.selection.objectives import Measure, TaskMetrics
from paint.selection.racing import racing_order
from paint.stats import decode_correct
from paint.types import PatchState, StateDict, is_image_tower_key
from paint.utils import hash_tensors
from paint.weights.ops import interpolate

ROLE_SPLITS = {"patch": ("train", "val", "test")}  # every other role needs val and test only


@dataclass
class PoolTask:
    """A task ready to evaluate: preprocessed images per split, labels, frozen head."""

    name: str
    role: str  # "patch" | "support" | any label a study gives (e.g. "transfer", "heldout")
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    images: dict[str, np.ndarray]  # split -> uint8 (N, 3, S, S), the cache file's memory map
    labels: dict[str, np.ndarray]
    identities: dict[str, str]
    head: torch.Tensor  # (C, D), carries the logit scale
    split_info: dict[str, Any]


def pick_device(name: str) -> torch.device:
    """The device for this process: under ``accelerate launch`` each rank gets its own GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PaintError("device: cuda was asked for but no CUDA GPU is visible")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    from accelerate import PartialState  # heavy: only when a GPU is there

    return PartialState().device


def load_tasks(specs: Sequence[TaskSpec], role: str) -> list[tuple[str, Any, dict]]:
    """Build every task and check the splits its role needs, before any output is written."""

    out = []
    for spec in specs:
        task, info = load_task(spec)
        for split in ROLE_SPLITS.get(role, ("val", "test")):
            task.split(split)  # raises on a missing or empty split, or labels outside the classes
        out.append((role, task, info))
    return out


def prepare_tasks(
    bundle: Any,
    loaded: Sequence[tuple[str, Any, dict]],
    cache_dir: Any,
    batch_size: int,
    num_workers: int | None = None,
) -> list[PoolTask]:
    """Preprocess (cached, ``num_workers`` decoding threads) and build the zero-shot head (cached) of every task."""

    prepared = []
    for role, task, info in progress(loaded, desc="prepare tasks (preprocess images, zero-shot heads)", unit="task"):
        images, labels, ids = {}, {}, {}
        for s in ROLE_SPLITS.get(role, ("val", "test")):
            split = task.split(s)
            images[s] = preprocess_array(
                split, bundle.spec, cache_dir=cache_dir / "images", progress=True, num_workers=num_workers
            )
            labels[s] = np.asarray(split.labels)
            ids[s] = split.identity
        head = zeroshot_head(bundle, task.classnames, task.templates, cache_dir=cache_dir, batch_size=batch_size)
        prepared.append(PoolTask(task.name, role, task.classnames, task.templates, images, labels, ids, head, info))
    return prepared


def state_id(theta: StateDict) -> str:
    """A short content id of an image-tower state (the results-store key of a single state)."""
    return hash_tensors(theta)[:16]


class Line:
    """The interpolation line theta(alpha) = theta_zs + alpha * (theta_ft - theta_zs), part by part.

    Both ends are :class:`paint.types.PatchState`: the image tower, and what a recipe adds (the
    text tower for flyp, whose heads are then rebuilt from it; learned heads for lp-ft, WiSE-FT's
    treatment of a fine-tuned classifier); each part is interpolated alike and alpha 0 stays the
    zero-shot model. A flat state dict given for an end is read into its parts
    (:meth:`PatchState.of`).

    Example:
        >>> import torch
        >>> from paint import Line
        >>> line = Line.between({"vision_model.w": torch.zeros(2)}, {"vision_model.w": torch.ones(2)})
        >>> line.at(0.5)["vision_model.w"]
        tensor([0.5000, 0.5000])
    """

    __slots__ = ("zs", "ft", "id")

    def __init__(self, theta_zs: StateDict, theta_ft: StateDict, id: str) -> None:
        self.zs, self.ft, self.id = PatchState.of(theta_zs), PatchState.of(theta_ft), id

    @classmethod
    def between(cls, theta_zs: StateDict, theta_ft: StateDict, tag: str = "") -> Line:
        """The line between two states, keyed by both contents (and an optional tag)."""
        return cls(theta_zs, theta_ft, f"{tag}{state_id(theta_zs)}-{state_id(theta_ft)}")

    @property
    def theta_zs(self) -> PatchState:
        return self.zs

    @property
    def theta_ft(self) -> PatchState:
        return self.ft

    def at(self, alpha: float, allow_extrapolation: bool = True) -> PatchState:
        """theta(alpha): every part of the two ends interpolated with the same alpha."""

        def part(a: StateDict, b: StateDict) -> dict[str, torch.Tensor]:
            return interpolate(a, b, alpha, allow_extrapolation=allow_extrapolation) if a or b else {}

        zs, ft = self.zs, self.ft
        return PatchState(part(zs.image, ft.image), part(zs.text, ft.text), part(zs.heads, ft.heads))


def sweep_point(alpha: float, metrics: TaskMetrics) -> dict[str, Any]:
    """One row of a validation sweep as runs record it (accuracy and loss per task)."""
    return {
        "alpha": float(alpha),
        "val": {n: m["accuracy"] for n, m in metrics.items()},
        "val_loss": {n: m["loss"] for n, m in metrics.items()},
    }


@dataclass
class TaskPool:
    """Prepared tasks on one model; ``evaluate_*`` -> per-task metrics, cached in ``store``.

    The model's image tower is overwritten by whatever state was evaluated last; callers that
    need a particular state afterwards load it (see :func:`paint.evaluation.line.set_image_tower`).

    Example:
        ```python
        from paint import Line, TaskPool

        pool = TaskPool(bundle.model, bundle.spec, tasks, store)
        metrics = pool.evaluate_line(Line.between(theta_zs, theta_ft), 0.4, "val")
        metrics["digits"]["accuracy"]  # per task: accuracy, loss, n and the per-image correctness
        ```
    """

    model: torch.nn.Module
    spec: ImageSpec
    tasks: list[PoolTask]
    store: ResultsStore | MemoryStore
    batch_size: int = 256
    bundle: Any = None  # the ClipBundle: its tokenizer rebuilds heads for states with a text tower (flyp)

    def names(self, role: str) -> list[str]:
        return [t.name for t in self.tasks if t.role == role]

    def task(self, name: str) -> PoolTask:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    def with_support(self, patch: Sequence[str]) -> TaskPool:
        """The pool restricted to ``patch`` (in that order) and the support tasks; same model, store and bundle."""
        tasks = [self.task(n) for n in patch] + [t for t in self.tasks if t.role == "support" and t.name not in patch]
        return TaskPool(self.model, self.spec, tasks, self.store, self.batch_size, bundle=self.bundle)

    def _selected(self, names: Sequence[str] | None) -> list[PoolTask]:
        return list(self.tasks) if names is None else [self.task(n) for n in names]

    def evaluate(
        self,
        state: Callable[[], StateDict],
        key: str,
        alpha: float,
        split: str,
        tasks: Sequence[str] | None = None,
        margins: bool = False,
    ) -> TaskMetrics:
        """Metrics of the state that ``state()`` builds (only if a result is missing) on ``split``.

        A task is scored with its zero-shot head, unless the state carries a learned one
        (``head::<task>``, lp-ft) or a text tower (flyp: every head rebuilt from it). With
        ``margins``, each task's per-image margins (``margin``) come too where its record has them
        (records written before margins were kept have none and are not measured again for them).
        """
        out: TaskMetrics = {}
        heads: dict[str, torch.Tensor] | None = None
        for t in self._selected(tasks):
            rkey = ResultKey(key, alpha, t.name, split)
            rec = self.store.get(rkey)
            if rec is None or "correct" not in rec:  # records older than per-image correctness are measured again
                if heads is None:
                    heads = self._load(state())
                metrics = evaluate_split(
                    self.model, heads.get(t.name, t.head), t.images[split], t.labels[split], self.spec, self.batch_size
                )
                rec = self.store.put(rkey, metrics)
            out[t.name] = {k: rec[k] for k in ("accuracy", "loss", "n", "correct")}
            if margins and MARGIN in rec:
                out[t.name][MARGIN] = rec[MARGIN]
        return out

    def _load(self, state: StateDict) -> dict[str, torch.Tensor]:
        """Load a state's towers; return the heads it implies (its learned ones, or rebuilt from its text tower)."""
        st = PatchState.of(state, self._is_image)
        self.model.load_state_dict(st.model_tensors(), strict=False)
        if st.text:
            return {**self.text_heads(), **st.heads}
        return dict(st.heads)

    def _is_image(self, key: str) -> bool:
        return self.bundle.family.is_image_tower_key(key) if self.bundle is not None else is_image_tower_key(key)

    def text_heads(self) -> dict[str, torch.Tensor]:
        """Every task's zero-shot head rebuilt from the model's current text tower (not cached: it moves)."""

        if self.bundle is None:
            raise PaintError("this task pool cannot rebuild heads from a text tower (it was made without the model)")
        return {t.name: build_head(self.bundle, t.classnames, t.templates, self.batch_size) for t in self.tasks}

    def race_reader(self, line: Line, split: str = "val") -> Callable[[float, str, int, int], np.ndarray]:
        """``read(alpha, task, start, stop)`` for :func:`paint.selection.racing.race_grid`: per-image correctness
        of images ``start:stop`` of the task's racing order at theta(alpha).

        Each chunk is stored under the split name ``<split>[race:<start>:<stop>]`` with its ``n`` (the
        results file records how many images each partial evaluation read), so a resumed race reads it
        back. The state is loaded once per alpha: the reader is for one race, during which nothing
        else uses the model.
        """

        loaded: dict[str, Any] = {}

        def read(alpha: float, task: str, start: int, stop: int) -> np.ndarray:
            key = ResultKey(line.id, alpha, task, f"{split}[race:{start}:{stop}]")
            rec = self.store.get(key)
            if rec is None or "correct" not in rec:
                t = self.task(task)
                rows = racing_order(task, len(t.labels[split]))[start:stop]
                if loaded.get("alpha") != alpha:
                    loaded.update(alpha=alpha, heads=self._load(line.at(alpha, True)))
                images = t.images[split][torch.as_tensor(rows)]
                labels = np.asarray(t.labels[split])[rows]
                head = loaded["heads"].get(t.name, t.head)
                rec = self.store.put(key, evaluate_split(self.model, head, images, labels, self.spec, self.batch_size))
            return decode_correct(rec["correct"], int(rec["n"]))

        return read

    def evaluate_line(
        self,
        line: Line,
        alpha: float,
        split: str,
        tasks: Sequence[str] | None = None,
        allow_extrapolation: bool = True,
        margins: bool = False,
    ) -> TaskMetrics:
        """Metrics at theta(alpha) on ``line`` (with ``margins``, the per-image margins where recorded)."""
        return self.evaluate(lambda: line.at(alpha, allow_extrapolation), line.id, alpha, split, tasks, margins)

    def evaluate_state(self, theta: StateDict, split: str, tasks: Sequence[str] | None = None) -> TaskMetrics:
        """Metrics of one image-tower state (keyed by its content)."""
        return self.evaluate(lambda: theta, f"state-{state_id(theta)}", 0.0, split, tasks)

    def measure(self, line: Line, split: str = "val") -> Measure:
        """The ``measure`` a :class:`paint.selection.Evaluator` calls: (alpha, need_derivative) -> metrics.

        Without a derivative, each task's metrics carry its per-image margins where its record has them
        (what ``strategy: surrogate`` interpolates). With a derivative, each task's loss, accuracy and
        exact dL/dalpha come from one forward and one backward pass
        (:func:`paint.evaluation.line.line_derivative`) and are stored too.
        """

        def measure(alpha: float, grad: bool) -> TaskMetrics:
            if not grad:
                return self.evaluate_line(line, alpha, split, margins=True)
            extra = line.ft.covers[1:]
            if extra:
                raise PaintError(
                    "a search with the exact derivative differentiates along the image tower only, but this line also "
                    f"interpolates the {' and the '.join(extra)}; choose another selection.strategy"
                )
            out: TaskMetrics = {}
            for t in self.tasks:
                key = ResultKey(line.id, alpha, t.name, split)
                rec = self.store.get(key)
                if rec is None or "dloss" not in rec:
                    data = [LossData(t.images[split], t.labels[split], t.head)]
                    p = line_derivative(
                        self.model, line.theta_zs, line.theta_ft, alpha, data, self.spec, self.batch_size
                    )
                    n = int(len(t.labels[split]))
                    rec = self.store.put(key, {"accuracy": p.accuracy, "loss": p.loss, "dloss": p.dloss, "n": n})
                out[t.name] = {"accuracy": rec["accuracy"], "loss": rec["loss"], "dloss": rec["dloss"], "n": rec["n"]}
            return out

        return measure

    def load(self, theta: StateDict) -> None:
        """Put an image-tower state into the model (for a study's own predictions)."""
        set_image_tower(self.model, theta)


RoleSpecs = Sequence[tuple[str, Sequence[TaskSpec]]]  # (role, its task specs), e.g. [("patch", ...), ("support", ...)]


def load_model_run(cfg: Any, roles: RoleSpecs) -> tuple[Any, list[tuple[str, Any, dict]]]:
    """Load the tasks of every role and the model, and check each recipe fits the model; write nothing.

    ``cfg`` is any run config with model, revision, device (and, where it fine-tunes, finetune or
    recipes). A study checks what else it needs on the loaded tasks, then opens its run
    (:func:`paint.pipeline.run.open_run`) and makes its pool (:func:`new_pool`).
    """

    loaded = [entry for role, specs in roles for entry in load_tasks(specs, role)]
    bundle = load_clip(cfg.model, cfg.revision, device=pick_device(cfg.device))
    for ft in finetune_configs(cfg):  # what needs the model (LoRA's target layers), before any output
        ft.recipe.check_model(bundle.model)
    return bundle, loaded


def new_pool(bundle: Any, tasks: Sequence[PoolTask], out: Path, batch_size: int) -> TaskPool:
    """The run's pool: ``tasks`` on the bundle's model, results stored in ``out/results.jsonl``."""
    return TaskPool(
        bundle.model, bundle.spec, list(tasks), ResultsStore(out / "results.jsonl"), batch_size, bundle=bundle
    )


def start_pool(
    cfg: Any,
    out: Path,
    resume: bool,
    patch_specs: Sequence[TaskSpec],
    support_specs: Sequence[TaskSpec],
    marker: str = "summary.json",
) -> tuple[TaskPool, Any]:
    """Load the model and tasks (every check before any output), open the run, prepare the pool.

    ``cfg`` is any run config with model, revision, device, eval_batch_size, num_workers and cache_path.
    """

    bundle, loaded = load_model_run(cfg, [("patch", patch_specs), ("support", support_specs)])
    open_run(out, cfg, resume, marker)
    tasks = prepare_tasks(bundle, loaded, cfg.cache_path, cfg.eval_batch_size, cfg.num_workers)
    return new_pool(bundle, tasks, out, cfg.eval_batch_size), bundle

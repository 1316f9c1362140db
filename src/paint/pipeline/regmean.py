"""RegMean's data side: Gram matrices of the inputs of every linear layer of the image tower.

RegMean (Jin et al. 2023, arXiv:2212.09849; the closed form is :mod:`paint.weights.regmean`)
merges each linear layer from ``G_i = X_i^T X_i``, where ``X_i`` holds the inputs that layer
sees (one row per token, or per image for a projection) when fine-tuned model ``i`` runs on
images of its own task. :func:`gather_grams` collects them in one forward pass over
preprocessed images, through forward hooks on the ``nn.Linear`` modules of the image tower
(no copy of the model), accumulating in float64. A linear module that the forward pass
never calls (the ``out_proj`` of SigLIP's ``nn.MultiheadAttention`` pooling head, which is
applied functionally) gets no Gram matrix and is merged by the plain mean.

For the models of a merge (``paint merge``), :func:`each_model_grams` loads every task (a bad
one fails before any model loads), loads the base model once with
:func:`paint.models.clip.load_clip`, preprocesses ``n_images`` images drawn (seeded) from each
model's train split, and then, for each model in turn, copies that model's image-tower tensors
into the base model (one model's weights in memory at a time) and runs the forward pass.
:func:`stored_grams` writes each model's Gram matrices to a safetensors file as soon as its
forward pass is done and hands back mappings that read one matrix when it is looked up;
:func:`model_grams` keeps them all in memory. The in-memory fine-tunes of a task pool
(parallel patching's combine step, the merging benchmark) get theirs from
:func:`paint.pipeline.combine.pool_grams`. This module imports nothing of the training stack
(``paint merge`` does not pay for it).

Size: one ``(in, in)`` float64 matrix per linear layer per model, ``8 * sum(in^2)`` bytes per
model: about 1.2 GB for a ViT-B/32 image tower (12 layers of q/k/v/out/fc1 at 768 and fc2 at
3072, plus the projection) and 4.2 GB for a ViT-L/14. :func:`stored_grams` holds one model's in
memory (while it is gathered and written) and puts ``N`` times that on disk; :func:`model_grams`
holds all ``N``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paint.data.preprocess import ImageSpec, normalize, preprocess_split
from paint.data.registry import load_task
from paint.data.rows import read_rows
from paint.data.spec import TaskSpec
from paint.data.task import SubsetSplit
from paint.errors import PaintError
from paint.models.clip import load_clip
from paint.models.families import family_of
from paint.progress import progress as tqdm
from paint.weights.io import CheckpointReader, LazyStateDict
from paint.weights.regmean import RegMeanParams
from paint.weights.writer import save_state_dict

TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class GramSet:
    """One model's Gram matrices.

    Attributes:
        grams: a linear layer's weight key (``vision_model....q_proj.weight``) -> ``X^T X``, ``(in, in)`` float64, CPU.
        rows: the same key -> number of input rows (tokens or images) accumulated.
        images: images run through the model.
    """

    grams: dict[str, torch.Tensor]
    rows: dict[str, int]
    images: int

    @property
    def nbytes(self) -> int:
        return sum(g.numel() * g.element_size() for g in self.grams.values())


def image_tower_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The ``nn.Linear`` modules of the model family's image tower, by module name."""
    tower = family_of(model).is_image_tower_key
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and tower(f"{name}.weight")}


@torch.inference_mode()
def gather_grams(
    model: torch.nn.Module,
    images: Any,
    spec: ImageSpec,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "regmean: Gram matrices",
) -> GramSet:
    """Gram matrices ``X^T X`` of the inputs of every linear layer of the image tower, in one forward pass.

    Args:
        model: a loaded dual encoder (any registered family), on the device to run on.
        images: uint8 ``(N, 3, S, S)`` preprocessed images (tensor, array or memory map).
        spec: the model's :class:`paint.data.preprocess.ImageSpec` (normalisation).
        batch_size: images per forward pass.
        progress: show a progress bar.
        desc: the bar's label.

    Each hooked layer's input ``(..., in)`` is flattened to rows (a token of an image is a row)
    and ``X^T X`` is accumulated in float64 on the model's device; the result is on the CPU.
    """
    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    grams: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def hook_for(key: str):
        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0].detach()
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)
            if key in grams:
                grams[key].addmm_(x.T, x)
            else:
                grams[key] = x.T @ x
            rows[key] = rows.get(key, 0) + x.shape[0]

        return hook

    family = family_of(model)
    handles = [m.register_forward_hook(hook_for(f"{name}.weight")) for name, m in image_tower_linears(model).items()]
    n = len(images)
    try:
        for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress):
            batch = read_rows(images, slice(start, start + batch_size)).to(device)
            family.image_features(model, normalize(batch, spec.mean, spec.std).to(dtype))
    finally:
        for h in handles:
            h.remove()
    return GramSet({k: g.cpu() for k, g in grams.items()}, rows, n)


def sample_indices(n: int, n_images: int, seed: int) -> np.ndarray:
    """``min(n, n_images)`` distinct indices of ``range(n)``, drawn with ``seed``, in increasing order."""
    return np.sort(np.random.default_rng(seed).permutation(n)[: min(n, n_images)])


def train_sample(spec: TaskSpec, params: RegMeanParams) -> SubsetSplit:
    """``params.n_images`` images (all when fewer) drawn with ``params.seed`` from the task's train split."""

    task, _ = load_task(spec)
    split = task.split(TRAIN_SPLIT)
    idx = sample_indices(len(split), params.n_images, params.seed)
    return SubsetSplit(split, idx, f"{split.identity}/regmean-{params.seed}-{len(idx)}")


def load_image_tower(model: torch.nn.Module, reader: CheckpointReader) -> None:
    """Copy a checkpoint's image-tower tensors into ``model`` in place, one tensor at a time."""
    tower = family_of(model).is_image_tower_key
    target = {k: v for k, v in model.state_dict().items() if tower(k)}
    missing = [k for k in target if k not in reader]
    if missing:
        raise PaintError(
            f"checkpoint {reader.path} has no tensor {missing[0]!r} of the base model's image tower "
            f"({len(missing)} missing); regmean runs each model in the base's architecture"
        )
    with torch.no_grad():
        for k, v in target.items():
            t = reader.get(k)
            if tuple(t.shape) != tuple(v.shape):
                raise PaintError(
                    f"checkpoint {reader.path}: tensor {k!r} has shape {tuple(t.shape)}, the base {tuple(v.shape)}"
                )
            v.copy_(t)


def merge_device(name: str) -> torch.device:
    """Where a merge's forward passes run: ``cpu``, ``cuda`` (refused when no GPU is visible), or ``auto`` (a GPU if any).

    One process, the current GPU: a merge is not launched under accelerate (the task pool's
    :func:`paint.pipeline.pool.pick_device` gives each rank of such a launch its own GPU).
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise PaintError("device: cuda was asked for but no CUDA GPU is visible")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def each_model_grams(
    base: str,
    models: Sequence[tuple[CheckpointReader, TaskSpec]],
    params: RegMeanParams,
    progress: bool = False,
) -> Iterator[GramSet]:
    """Each model's Gram matrices on its own task, one model at a time, run in the base's architecture.

    Args:
        base: the base checkpoint directory (loaded once with :func:`paint.models.clip.load_clip`).
        models: each model's opened checkpoint and its task.
        params: RegMean's parameters (``n_images``, ``seed``, ``batch_size``, ``device``).
        progress: show progress bars.

    Every task is loaded and its images preprocessed before any model runs, so a bad task
    fails first. The generator keeps no reference to a set it has yielded: a caller that drops
    each one before asking for the next holds one model's Gram matrices at a time.
    """

    samples = [train_sample(spec, params) for _, spec in models]  # every task loads before the model does
    bundle = load_clip(base, device=merge_device(params.device))
    images = [preprocess_split(sample, bundle.spec, progress=progress) for sample in samples]
    for i, ((reader, spec), imgs) in enumerate(zip(models, images)):
        load_image_tower(bundle.model, reader)
        desc = f"regmean: Gram matrices of model {i} on {spec.name}"
        yield gather_grams(bundle.model, imgs, bundle.spec, params.batch_size, progress, desc)


def model_grams(
    base: str,
    models: Sequence[tuple[CheckpointReader, TaskSpec]],
    params: RegMeanParams,
    progress: bool = False,
) -> list[GramSet]:
    """Every model's Gram matrices (:func:`each_model_grams`), all kept in memory (``N`` models' worth)."""
    return list(each_model_grams(base, models, params, progress))


GRAMS_FILE = "grams-{}.safetensors"


def stored_grams(
    base: str,
    models: Sequence[tuple[CheckpointReader, TaskSpec]],
    params: RegMeanParams,
    directory: str | Path,
    progress: bool = False,
) -> list[LazyStateDict]:
    """Every model's Gram matrices, each model's written to ``directory`` as soon as its forward pass is done.

    Args:
        base, models, params, progress: as :func:`each_model_grams`.
        directory: where the files go (``grams-<i>.safetensors``, each written atomically); created
            if missing. The caller removes it (``paint merge``: inside the output's own temporary directory).

    Returns:
        One lazily read mapping per model (weight key -> ``(in, in)`` float64 Gram matrix), for
        :func:`paint.weights.regmean.with_grams`: a merge then reads one matrix at a time.
        Memory: one model's Gram matrices while they are gathered and written.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[LazyStateDict] = []
    for gram_set in each_model_grams(base, models, params, progress):  # no enumerate: its tuple would keep a set alive
        path = folder / GRAMS_FILE.format(len(out))
        try:
            save_state_dict(gram_set.grams, path)
        except PaintError as e:  # a non-finite Gram matrix: the model's forward pass overflowed or met NaN
            raise PaintError(f"regmean: model {len(out)} ({models[len(out)][1].name}): {e}") from None
        del gram_set  # before the next model's forward pass
        out.append(LazyStateDict(CheckpointReader(path)))
    return out

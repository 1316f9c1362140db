"""Losses, gradients and the exact derivative along the interpolation line.

On the line theta(alpha) = theta_zs + alpha * (theta_ft - theta_zs) over the image tower,

    dL/dalpha = grad_theta L(theta(alpha)) . (theta_ft - theta_zs),

so one forward and one backward pass give both L(alpha) and its slope. The functions here
compute in the model's own dtype (a float64 copy of a tiny model checks against finite
differences) and take gradients with ``torch.autograd.grad``, leaving ``.grad`` untouched.

The pipeline's task pool (:meth:`paint.pipeline.pool.TaskPool.measure`) turns this into the
``measure`` that :mod:`paint.selection` evaluates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from paint.data.preprocess import ImageSpec, normalize
from paint.data.rows import read_rows
from paint.models.clip import image_features
from paint.models.families import family_of
from paint.types import StateDict
from paint.weights.ops import interpolate


@dataclass(frozen=True)
class LossData:
    """One task's data for a loss: uint8 images (N, 3, S, S), labels (N,), frozen head (C, D).

    ``weight`` scales this task's mean cross-entropy in a weighted sum over tasks.
    """

    images: torch.Tensor
    labels: np.ndarray | torch.Tensor
    head: torch.Tensor
    weight: float = 1.0


@dataclass(frozen=True)
class LossGrad:
    """Weighted loss, pooled accuracy and the gradient over the image-tower parameters."""

    loss: float
    accuracy: float
    grads: dict[str, torch.Tensor]


def set_image_tower(model: torch.nn.Module, state: StateDict) -> None:
    """Copy the image-tower tensors of ``state`` into ``model`` (other weights untouched)."""
    tower = family_of(model).is_image_tower_key
    model.load_state_dict({k: v for k, v in state.items() if tower(k)}, strict=False)


def line_point(theta_zs: StateDict, theta_ft: StateDict, alpha: float) -> dict[str, torch.Tensor]:
    """theta_zs + alpha * (theta_ft - theta_zs) over floating-point tensors, any alpha."""

    return interpolate(theta_zs, theta_ft, alpha, allow_extrapolation=True)


def loss_and_gradient(
    model: torch.nn.Module,
    data: Sequence[LossData],
    spec: ImageSpec,
    batch_size: int = 256,
) -> LossGrad:
    """sum_t weight_t * mean cross-entropy of task t, and its gradient over image-tower parameters.

    Computed at the model's current weights, in its dtype, in eval mode (no dropout), one
    backward pass per batch with gradients accumulated.
    """
    tower = family_of(model).is_image_tower_key
    params = {n: p for n, p in model.named_parameters() if tower(n) and p.is_floating_point()}
    names = list(params)
    device = next(model.parameters()).device
    dtype = next(iter(params.values())).dtype
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    flags = {n: p.requires_grad for n, p in params.items()}
    model.eval()
    total, correct, count = 0.0, 0, 0
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            for d in data:
                labels = torch.as_tensor(np.asarray(d.labels), dtype=torch.long)
                head = d.head.detach().to(device=device, dtype=dtype)
                n = len(labels)
                for i in range(0, n, batch_size):
                    pixels = normalize(
                        read_rows(d.images, slice(i, i + batch_size)).to(device), spec.mean, spec.std
                    ).to(dtype)
                    y = labels[i : i + batch_size].to(device)
                    feats = F.normalize(image_features(model, pixels), dim=-1)  # (B, D)
                    logits = feats @ head.t()  # (B, C)
                    # Sum over the batch, scaled so the batches add up to weight * mean over the task.
                    loss = F.cross_entropy(logits, y, reduction="sum") * (d.weight / n)
                    batch_grads = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
                    for k, g in zip(names, batch_grads, strict=True):
                        if g is not None:
                            grads[k] += g
                    total += float(loss.detach())
                    correct += int((logits.detach().argmax(dim=1) == y).sum())
                    count += len(y)
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    return LossGrad(loss=total, accuracy=correct / max(1, count), grads=grads)


@torch.inference_mode()
def weighted_loss(model: torch.nn.Module, data: Sequence[LossData], spec: ImageSpec, batch_size: int = 256) -> float:
    """sum_t weight_t * mean cross-entropy of task t at the current weights, in the model's dtype."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for d in data:
            labels = torch.as_tensor(np.asarray(d.labels), dtype=torch.long)
            head = d.head.detach().to(device=device, dtype=dtype)
            for i in range(0, len(labels), batch_size):
                pixels = normalize(read_rows(d.images, slice(i, i + batch_size)).to(device), spec.mean, spec.std).to(
                    dtype
                )
                logits = F.normalize(image_features(model, pixels), dim=-1) @ head.t()  # (B, C)
                loss = F.cross_entropy(logits, labels[i : i + batch_size].to(device), reduction="sum")
                total += float(loss) * d.weight / len(labels)
    finally:
        model.train(was_training)
    return total


def directional_derivative(grads: Mapping[str, torch.Tensor], theta_zs: StateDict, theta_ft: StateDict) -> float:
    """grad . (theta_ft - theta_zs), accumulated in float64 over the keys of ``grads``."""
    total = torch.zeros((), dtype=torch.float64)
    for k, g in grads.items():
        direction = theta_ft[k].double() - theta_zs[k].double()
        total += (g.detach().double().cpu() * direction.cpu()).sum()
    return float(total)


@dataclass(frozen=True)
class LinePoint:
    """L(alpha), dL/dalpha and the pooled accuracy at one alpha."""

    alpha: float
    loss: float
    dloss: float
    accuracy: float


def line_derivative(
    model: torch.nn.Module,
    theta_zs: StateDict,
    theta_ft: StateDict,
    alpha: float,
    data: Sequence[LossData],
    spec: ImageSpec,
    batch_size: int = 256,
) -> LinePoint:
    """Loss and exact dL/dalpha at theta(alpha), from one forward and one backward pass.

    Sets the model's image tower to theta(alpha) (and leaves it there).

    Args:
        model: a transformers CLIPModel; its dtype is the compute dtype.
        theta_zs: image-tower state at alpha = 0.
        theta_ft: image-tower state at alpha = 1 (same keys).
        alpha: where on the line (any real number).
        data: the tasks whose weighted loss is differentiated.
        spec: the checkpoint's normalisation.
        batch_size: images per forward pass.
    """
    set_image_tower(model, line_point(theta_zs, theta_ft, alpha))
    lg = loss_and_gradient(model, data, spec, batch_size)
    return LinePoint(
        alpha=float(alpha),
        loss=lg.loss,
        dloss=directional_derivative(lg.grads, theta_zs, theta_ft),
        accuracy=lg.accuracy,
    )

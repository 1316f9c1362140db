"""The image tower as a function of per-block coefficients, through ``torch.func.functional_call``.

theta(x) = theta_zs + sum_i sum_l x[i, l] * tau_i[block l], with tau_i = theta_i - theta_zs (one
task vector per patched task, one coefficient per block of :mod:`paint.weights.blocks`). The
forward pass runs the one loaded model with the interpolated tensors swapped in by
``functional_call``, so there is no model copy and gradients flow to the coefficients: one
backward pass gives d loss / d x for every block at once (layer-wise AdaMerging's gradient).

Measurements (no gradient) build theta(x) with :func:`paint.weights.blocks.interpolate_blocks`
or :func:`paint.weights.blocks.add_block_task_vectors`, the functions that write the patched
checkpoint, so what is chosen is bit for bit what is shipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from paint.data.preprocess import ImageSpec, normalize
from paint.data.rows import read_rows
from paint.selection.blockwise import GradientStep
from paint.types import StateDict
from paint.weights.blocks import add_block_task_vectors, block_names, block_of, interpolate_blocks
from paint.weights.ops import check_compatible, task_vector

_PARTS = ("vision_model.", "visual_projection.")


def tower_features(model: torch.nn.Module, params: StateDict, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings (B, D) of ``model`` with the image-tower tensors of ``params``.

    ``params`` holds full model keys (``vision_model.*``, ``visual_projection.*``); tensors it
    lacks (buffers, integer ids) are the model's own.
    """
    sub = {p: {k[len(p) :]: v for k, v in params.items() if k.startswith(p)} for p in _PARTS}
    pooled = functional_call(model.vision_model, sub["vision_model."], (), {"pixel_values": pixel_values})
    return functional_call(model.visual_projection, sub["visual_projection."], (pooled.pooler_output,))


def tower_logits(model: torch.nn.Module, params: StateDict, head: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """CLIP logits (B, C) against a frozen zero-shot head (C, D) that carries the logit scale."""
    feats = F.normalize(tower_features(model, params, pixels), dim=-1)  # (B, D)
    return feats @ head.t().to(device=feats.device, dtype=feats.dtype)


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Prediction entropy (nats) per row of logits (B, C) -> (B,)."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@dataclass(frozen=True)
class TaskData:
    """One task's validation images (uint8 (N, 3, S, S)), labels ((N,), -1 = unknown) and frozen head (C, D)."""

    name: str
    images: torch.Tensor
    labels: np.ndarray
    head: torch.Tensor

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((np.asarray(self.labels) >= 0).all())


@dataclass
class BlockBasis:
    """theta(x) over per-block coefficients x of shape (n_vectors, n_blocks), flattened task-major.

    Args:
        theta_zs: the zero-shot image tower.
        thetas: one fine-tuned image tower per task vector (same keys, shapes, dtypes).
    """

    theta_zs: StateDict
    thetas: Sequence[StateDict]
    blocks: list[str] = field(init=False)
    _deltas: list[dict[str, torch.Tensor]] = field(init=False, repr=False)
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for t in self.thetas:
            check_compatible(self.theta_zs, t, ("zero-shot model", "fine-tuned model"))
        self.blocks = block_names(self.theta_zs)
        self._deltas = [task_vector(self.theta_zs, t) for t in self.thetas]
        pos = {b: i for i, b in enumerate(self.blocks)}
        self._index = {k: pos[block_of(k)] for k in self.theta_zs}

    @property
    def n_vectors(self) -> int:
        return len(self.thetas)

    @property
    def size(self) -> int:
        return self.n_vectors * len(self.blocks)

    def alphas_of(self, x: Sequence[float]) -> list[dict[str, float]]:
        """The flat vector as one {block: alpha} per task vector."""
        n = len(self.blocks)
        return [{b: float(x[i * n + j]) for j, b in enumerate(self.blocks)} for i in range(self.n_vectors)]

    def state(self, x: Sequence[float]) -> dict[str, torch.Tensor]:
        """theta(x) exactly as the patched checkpoint is written (no gradient)."""
        alphas = self.alphas_of(x)
        if self.n_vectors == 1:
            return interpolate_blocks(self.theta_zs, self.thetas[0], alphas[0])
        return add_block_task_vectors(self.theta_zs, self._deltas, alphas)

    def params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta(x), differentiable in ``x`` (a float tensor of :attr:`size` entries)."""
        n = len(self.blocks)
        out: dict[str, torch.Tensor] = {}
        for k, t0 in self.theta_zs.items():
            if k not in self._deltas[0]:
                continue  # integer buffers: the model's own
            dtype = t0.dtype
            acc = t0
            for i, d in enumerate(self._deltas):
                acc = acc + x[i * n + self._index[k]].to(dtype) * d[k]
            out[k] = acc
        return out


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


@torch.inference_mode()
def measure_state(
    model: torch.nn.Module,
    params: StateDict,
    tasks: Sequence[TaskData],
    spec: ImageSpec,
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Per task: ``entropy`` (mean, nats) and ``n``; ``accuracy`` and ``loss`` only when every label is known."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    p = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v for k, v in params.items()}
    model.eval()
    out: dict[str, dict[str, float]] = {}
    for t in tasks:
        logits = []
        for s in _batches(len(t.images), batch_size):
            pixels = normalize(read_rows(t.images, s).to(device), spec.mean, spec.std).to(dtype)
            logits.append(tower_logits(model, p, t.head, pixels).float().cpu())
        z = torch.cat(logits) if logits else torch.empty(0, t.head.shape[0])
        rec = {"entropy": float(entropy_of(z).mean()), "n": int(len(z))}
        if t.labelled:
            y = torch.as_tensor(np.asarray(t.labels), dtype=torch.long)
            rec["accuracy"] = int((z.argmax(dim=1) == y).sum()) / max(1, len(y))  # exact (float32 means round)
            rec["loss"] = float(F.cross_entropy(z, y))
        out[t.name] = rec
    return out


@torch.inference_mode()
def predictions(
    model: torch.nn.Module, params: StateDict, task: TaskData, spec: ImageSpec, batch_size: int = 256
) -> torch.Tensor:
    """Log-probabilities (N, C) of ``params`` on a task's images (the zero-shot reference of the KL term)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = []
    for s in _batches(len(task.images), batch_size):
        pixels = normalize(read_rows(task.images, s).to(device), spec.mean, spec.std).to(dtype)
        out.append(F.log_softmax(tower_logits(model, params, task.head, pixels).float(), dim=-1).cpu())
    return torch.cat(out)


@dataclass
class PenalisedLoss:
    """patch term + lambda * support term of per-block coefficients, with its gradient (the blockwise oracle).

    - patch term: mean cross-entropy on the patching tasks, or their mean prediction entropy
      (``entropy=True``: labels are never read);
    - support term: mean KL(zero-shot || theta(x)) of the support tasks' predictions
      (``support_loss="kl"``: labels never read; 0 at x = 0) or their cross-entropy (``"ce"``).

    Each task contributes a fixed sample of ``batch`` of its images (drawn once, seeded): the loss
    is then a deterministic function of x, so the support term at the start is a budget that later
    steps can be compared with exactly (a fresh sample each step made that comparison noise).
    """

    model: torch.nn.Module
    basis: BlockBasis
    spec: ImageSpec
    patch: Sequence[TaskData]
    support: Sequence[TaskData]
    entropy: bool = False
    support_loss: str = "kl"
    batch: int = 128
    seed: int = 0
    _ref: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _idx: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    n_images: int = field(default=0, init=False)  # images through forward + backward, in all

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        for t in [*self.patch, *self.support]:
            n = len(t.images)
            self._idx[t.name] = np.sort(rng.choice(n, size=min(n, self.batch), replace=False))
        if self.support_loss == "kl":
            zs = dict(self.basis.theta_zs)
            self._ref = {t.name: predictions(self.model, zs, t, self.spec) for t in self.support}

    def _sample(self, t: TaskData) -> np.ndarray:
        return self._idx[t.name]

    def _logits(self, params: StateDict, t: TaskData, idx: np.ndarray) -> torch.Tensor:
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        pixels = normalize(read_rows(t.images, idx).to(device), self.spec.mean, self.spec.std).to(dtype)
        self.n_images += len(idx)
        return tower_logits(self.model, params, t.head, pixels).float()

    def __call__(self, x: np.ndarray, multiplier: float):

        self.model.eval()
        xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
        with torch.enable_grad():
            params = self.basis.params(xt)
            patch_terms = []
            for t in self.patch:
                idx = self._sample(t)
                z = self._logits(params, t, idx)
                if self.entropy:
                    patch_terms.append(entropy_of(z).mean())
                else:
                    patch_terms.append(F.cross_entropy(z, torch.as_tensor(np.asarray(t.labels)[idx], dtype=torch.long)))
            support_terms = []
            for t in self.support:
                idx = self._sample(t)
                z = self._logits(params, t, idx)
                if self.support_loss == "kl":
                    ref = self._ref[t.name][torch.as_tensor(idx)]
                    support_terms.append(F.kl_div(F.log_softmax(z, -1), ref, log_target=True, reduction="batchmean"))
                else:
                    y = torch.as_tensor(np.asarray(t.labels)[idx], dtype=torch.long)
                    support_terms.append(F.cross_entropy(z, y))
            patch = torch.stack(patch_terms).mean()
            support = torch.stack(support_terms).mean() if support_terms else torch.zeros(())
            loss = patch + float(multiplier) * support
            (grad,) = torch.autograd.grad(loss, [xt])
        return GradientStep(
            float(loss.detach()),
            grad.detach().numpy().astype(np.float64),
            float(patch.detach()),
            float(support.detach()),
        )

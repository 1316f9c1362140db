"""Transfer metrics between a zero-shot and a fine-tuned image tower.

With w_zs, w_ft the flattened image-tower weights and L_supp the mean of the support tasks'
mean cross-entropies (see REFERENCE.md, "Choosing the coefficient by loss"):

- GradientSimilarity = cos(w_zs - w_ft, grad_w L_supp(w_zs)): positive when the step back
  towards w_zs is uphill for the support loss, i.e. fine-tuning moved downhill for it too.
- BackwardKnowledgeTransfer = max over alpha in a grid in (0, 1] of
  (L_supp(w_zs) - L_supp(w_alpha)) / (alpha * ||w_zs - w_ft||_2): the best support-loss
  decrease per unit of distance travelled along the line.
- Linear CKA (Kornblith et al., 2019, with centering) between the zero-shot and the
  fine-tuned image embeddings of one task's images: 1 means the same representation up to
  rotation and isotropic scaling.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from paint.config import load_config
from paint.data.preprocess import ImageSpec, normalize
from paint.errors import PaintError
from paint.evaluation.line import (
    LossData,
    line_point,
    loss_and_gradient,
    set_image_tower,
    weighted_loss,
)
from paint.models.clip import image_features, load_clip
from paint.pipeline.patch import PatchConfig
from paint.pipeline.pool import load_tasks, pick_device, prepare_tasks
from paint.progress import phase, progress
from paint.train.checkpoint import TRAINABLE, load_checkpoint_file
from paint.utils import write_json_atomic
from paint.weights.ops import complete_state

StateDict = Mapping[str, torch.Tensor]
BKT_GRID: tuple[float, ...] = tuple(round(i / 10, 10) for i in range(1, 11))


def _float_keys(theta: StateDict) -> list[str]:
    return sorted(k for k, v in theta.items() if v.is_floating_point())


def weight_distance(theta_zs: StateDict, theta_ft: StateDict) -> float:
    """||w_zs - w_ft||_2 over the floating-point tensors, in float64."""
    sq = sum(float(((theta_zs[k].double() - theta_ft[k].double()) ** 2).sum()) for k in _float_keys(theta_zs))
    return float(np.sqrt(sq))


def cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Cosine of two same-keyed tensor collections seen as one flat vector each (float64)."""
    keys = sorted(set(a) & set(b))
    dot = sum(float((a[k].double() * b[k].double()).sum()) for k in keys)
    na = np.sqrt(sum(float((a[k].double() ** 2).sum()) for k in keys))
    nb = np.sqrt(sum(float((b[k].double() ** 2).sum()) for k in keys))
    if na == 0 or nb == 0:
        raise PaintError(
            "cosine of a zero vector: the fine-tuned weights equal the zero-shot ones, or the gradient vanished"
        )
    return float(dot / (na * nb))


def gradient_similarity(
    model: torch.nn.Module,
    theta_zs: StateDict,
    theta_ft: StateDict,
    support: Sequence[LossData],
    spec: ImageSpec,
    batch_size: int = 256,
) -> float:
    """cos(w_zs - w_ft, grad_w L_supp(w_zs)); ``support`` weights should sum to 1 for a mean.

    Leaves the model's image tower at theta_zs.
    """
    set_image_tower(model, theta_zs)
    lg = loss_and_gradient(model, support, spec, batch_size)  # grads over the tower's parameters
    diff = {k: theta_zs[k].double() - theta_ft[k].double() for k in lg.grads if k in theta_zs}
    return cosine(diff, lg.grads)


def bkt_from_losses(
    alphas: Sequence[float], losses: Sequence[float], loss0: float, distance: float
) -> tuple[float, float]:
    """(BackwardKnowledgeTransfer, the alpha attaining it) from support losses along the line."""
    if distance <= 0:
        raise PaintError("the fine-tuned weights equal the zero-shot ones: BackwardKnowledgeTransfer is undefined")
    pairs = [(float(a), float(v)) for a, v in zip(alphas, losses, strict=True) if a > 0]
    if not pairs:
        raise PaintError("BackwardKnowledgeTransfer needs at least one alpha in (0, 1]")
    scores = [((loss0 - v) / (a * distance), a) for a, v in pairs]
    best, at = max(scores, key=lambda s: (s[0], -s[1]))
    return float(best), float(at)


def backward_knowledge_transfer(
    model: torch.nn.Module,
    theta_zs: StateDict,
    theta_ft: StateDict,
    support: Sequence[LossData],
    spec: ImageSpec,
    alphas: Sequence[float] = BKT_GRID,
    batch_size: int = 256,
) -> dict[str, float | list[float]]:
    """BackwardKnowledgeTransfer over ``alphas`` (each in (0, 1]) with the support losses it used."""
    if any(not 0.0 < a <= 1.0 for a in alphas):
        raise PaintError("BackwardKnowledgeTransfer alphas must lie in (0, 1]")

    losses = []
    for a in progress([0.0, *alphas], desc="BackwardKnowledgeTransfer: support loss along the line", unit="alpha"):
        set_image_tower(model, line_point(theta_zs, theta_ft, a))
        losses.append(weighted_loss(model, support, spec, batch_size))
    dist = weight_distance(theta_zs, theta_ft)
    bkt, at = bkt_from_losses(alphas, losses[1:], losses[0], dist)
    set_image_tower(model, theta_zs)
    return {"bkt": bkt, "alpha": at, "alphas": list(alphas), "losses": losses[1:], "loss0": losses[0], "distance": dist}


def linear_cka(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Linear CKA of two representations of the same n examples, x (n, p) and y (n, q).

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), with Xc, Yc column-centred.
    """
    X = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    Y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise PaintError(
            f"linear CKA needs two (n, features) matrices with the same n, got {tuple(X.shape)} and {tuple(Y.shape)}"
        )
    X = X - X.mean(dim=0, keepdim=True)
    Y = Y - Y.mean(dim=0, keepdim=True)
    cross = torch.linalg.matrix_norm(Y.t() @ X) ** 2
    denom = torch.linalg.matrix_norm(X.t() @ X) * torch.linalg.matrix_norm(Y.t() @ Y)
    if float(denom) == 0.0:
        raise PaintError("linear CKA is undefined for a constant representation")
    return float(cross / denom)


@torch.inference_mode()
def image_embeddings(
    model: torch.nn.Module, images: torch.Tensor, spec: ImageSpec, batch_size: int = 256
) -> torch.Tensor:
    """L2-normalised image embeddings (N, D), the ones the zero-shot head scores."""

    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        px = normalize(torch.as_tensor(images[i : i + batch_size]).to(device), spec.mean, spec.std)
        out.append(F.normalize(image_features(model, px).double(), dim=-1).cpu())
    return torch.cat(out)


def feature_cka(
    model: torch.nn.Module,
    theta_zs: StateDict,
    theta_ft: StateDict,
    images: torch.Tensor,
    spec: ImageSpec,
    batch_size: int = 256,
) -> float:
    """Linear CKA between zero-shot and fine-tuned image embeddings of ``images``."""
    set_image_tower(model, theta_zs)
    a = image_embeddings(model, images, spec, batch_size)
    set_image_tower(model, theta_ft)
    b = image_embeddings(model, images, spec, batch_size)
    set_image_tower(model, theta_zs)
    return linear_cka(a, b)


def transfer_metrics(
    model: torch.nn.Module,
    theta_zs: StateDict,
    theta_ft: StateDict,
    support: Mapping[str, LossData],
    cka_images: Mapping[str, torch.Tensor],
    spec: ImageSpec,
    alphas: Sequence[float] = BKT_GRID,
    batch_size: int = 256,
) -> dict[str, object]:
    """Every metric for one fine-tuned model: GS and BKT on the support tasks (equal weights), CKA per task."""

    out: dict[str, object] = {"distance": weight_distance(theta_zs, theta_ft)}
    if support:
        w = 1.0 / len(support)
        data = [LossData(d.images, d.labels, d.head, w) for d in support.values()]
        out["support_tasks"] = list(support)
        with phase("GradientSimilarity: support-loss gradient at the zero-shot model"):
            out["gradient_similarity"] = gradient_similarity(model, theta_zs, theta_ft, data, spec, batch_size)
        out["backward_knowledge_transfer"] = backward_knowledge_transfer(
            model, theta_zs, theta_ft, data, spec, alphas, batch_size
        )
    out["cka"] = {
        name: feature_cka(model, theta_zs, theta_ft, imgs, spec, batch_size)
        for name, imgs in progress(cka_images.items(), desc="linear CKA", total=len(cka_images), unit="task")
    }
    set_image_tower(model, theta_zs)
    return out


# ----------------------------------------------------------------------------- from runs and checkpoints


def _loss_data(prepared, split: str) -> dict[str, LossData]:
    return {t.name: LossData(t.images[split], t.labels[split], t.head) for t in prepared}


def pair_metrics(
    zeroshot: str,
    theta_ft: StateDict | str,
    support: Sequence,
    cka_tasks: Sequence,
    split: str = "val",
    alphas: Sequence[float] = BKT_GRID,
    batch_size: int = 256,
    cache_dir: str | None = None,
    device: str = "auto",
) -> dict[str, object]:
    """Metrics for a zero-shot model and fine-tuned image-tower weights (a state or a checkpoint path).

    Args:
        zeroshot: model source (``paint:default``, a checkpoint directory or hub id); its text
            side builds the heads.
        theta_ft: fine-tuned image-tower state, a CLIP checkpoint directory to take it from, or a
            ``.safetensors`` file of image-tower tensors.
        support: :class:`paint.data.spec.TaskSpec` of the support tasks (GS, BKT).
        cka_tasks: TaskSpec of the tasks whose images CKA compares.
        split: which split the metrics use (validation by default).
    """

    bundle = load_clip(zeroshot, device=pick_device(device))
    theta_zs = bundle.image_tower_copy()
    if isinstance(theta_ft, str):
        if theta_ft.endswith(".safetensors"):  # e.g. a run's finetune/checkpoint/trainable.safetensors
            if not Path(theta_ft).is_file():
                raise PaintError(f"fine-tuned weights file {theta_ft} does not exist")
            theta_ft = load_checkpoint_file(Path(theta_ft))  # verified when it lies in a checkpoint
        else:
            theta_ft = load_clip(theta_ft).image_tower_state()
    theta_ft = complete_state(theta_zs, theta_ft)
    cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="paint-metrics-"))
    names_s = {t.name for t in support}
    loaded = load_tasks(support, "support") + load_tasks([t for t in cka_tasks if t.name not in names_s], "support")
    prepared = {t.name: t for t in prepare_tasks(bundle, loaded, cache, batch_size)}
    sup = _loss_data([prepared[t.name] for t in support], split)
    cka = {t.name: prepared[t.name].images[split] for t in cka_tasks}
    out = transfer_metrics(bundle.model, theta_zs, theta_ft, sup, cka, bundle.spec, alphas, batch_size)
    return {"zeroshot": zeroshot, "split": split, **out}


def run_metrics(run_dir: str, split: str = "val", alphas: Sequence[float] = BKT_GRID) -> dict[str, object]:
    """Metrics of a finished ``paint patch`` run: its fine-tuned tower against its base model.

    GS and BKT use the run's support tasks, CKA its patching tasks; the result is also written
    to ``<run_dir>/metrics.json``.
    """

    run = Path(run_dir)
    trained = run / "finetune" / "checkpoint" / TRAINABLE
    if not (run / "config.yaml").is_file() or not trained.is_file():
        raise PaintError(f"{run} is not a paint patch run (needs config.yaml and finetune/checkpoint/{TRAINABLE})")
    theta_ft = load_checkpoint_file(trained)  # checksums verified: a damaged file is refused, not measured
    cfg = load_config(PatchConfig, run / "config.yaml")
    out = pair_metrics(
        cfg.model,
        theta_ft,
        cfg.support_tasks,
        cfg.patch_tasks,
        split,
        alphas,
        cfg.eval_batch_size,
        str(cfg.cache_path),
        cfg.device,
    )
    out["run_dir"] = str(run)
    write_json_atomic(run / "metrics.json", out)
    return out

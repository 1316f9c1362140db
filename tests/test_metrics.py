"""Transfer metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from paint.data.preprocess import ImageSpec, normalize
from paint.errors import PaintError
from paint.evaluation.line import LossData
from paint.studies.metrics import (
    backward_knowledge_transfer,
    bkt_from_losses,
    feature_cka,
    gradient_similarity,
    linear_cka,
    transfer_metrics,
    weight_distance,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SPEC = ImageSpec(16, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
TOWER = ("vision_model.", "visual_projection.")


def test_linear_cka_by_hand():
    # One feature each: CKA is the squared correlation. Centred x = (-1, 0, 1), y = (0, -1, 1):
    # (y.x)^2 / (|x|^2 |y|^2) = 1 / 4.
    assert linear_cka([[1.0], [2.0], [3.0]], [[1.0], [0.0], [2.0]]) == pytest.approx(0.25)
    # X already centred, Y its first column: X^T X = [[2, 1], [1, 2]] (norm sqrt 10), Y^T Y = 2,
    # Y^T X = [2, 1] (squared norm 5): 5 / (2 sqrt 10).
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    assert linear_cka(X, X[:, :1]) == pytest.approx(5 / (2 * math.sqrt(10)))


def test_linear_cka_invariances():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 6, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert linear_cka(X, 3.0 * X @ Q + 7.0) == pytest.approx(1.0)  # rotation, scale, shift
    assert linear_cka(X, X) == pytest.approx(1.0)
    Y = torch.randn(50, 4, generator=g, dtype=torch.float64)
    assert 0.0 <= linear_cka(X, Y) < 0.5
    with pytest.raises(PaintError, match="the same n"):
        linear_cka(X, Y[:10])


def test_bkt_by_hand():
    # (1.0 - 0.8) / (0.5 * 2) = 0.2 beats (1.0 - 0.9) / (1.0 * 2) = 0.05
    assert bkt_from_losses([0.5, 1.0], [0.8, 0.9], 1.0, 2.0) == (pytest.approx(0.2), 0.5)
    # Every alpha hurts: the least negative one wins.
    assert bkt_from_losses([0.5, 1.0], [1.5, 1.2], 1.0, 1.0) == (pytest.approx(-0.2), 1.0)
    with pytest.raises(PaintError, match="BackwardKnowledgeTransfer is undefined"):
        bkt_from_losses([0.5], [1.0], 1.0, 0.0)


@pytest.fixture(scope="module")
def tiny(tiny_clip_dir):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_dir).double().eval()
    theta_zs = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(TOWER) and v.is_floating_point()}
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (12, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = np.arange(12) % 4
    head = F.normalize(torch.randn(4, 16, generator=g), dim=-1) * 10
    return model, theta_zs, [LossData(images, labels, head)]


def _reference_loss(model, d):
    """The mean cross-entropy written out independently of paint's code."""
    px = normalize(d.images, SPEC.mean, SPEC.std).double()
    emb = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
    logits = F.normalize(emb, dim=-1) @ d.head.double().t()
    return F.cross_entropy(logits, torch.as_tensor(d.labels))


def _reference_gradient(model, theta_zs, data):
    """The support-loss gradient at theta_zs, written out independently with .backward()."""
    model.load_state_dict(theta_zs, strict=False)
    params = {n: p for n, p in model.named_parameters() if n.startswith(TOWER)}
    for p in model.parameters():
        p.grad = None
    _reference_loss(model, data[0]).backward()
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    for p in model.parameters():
        p.grad = None
    return grads


def test_gradient_similarity_by_construction(tiny):
    model, zs, data = tiny
    g = _reference_gradient(model, zs, data)
    # A gradient-descent step: w_zs - w_ft = lr * grad, so the cosine is exactly 1.
    down = {k: zs[k] - 0.1 * g[k] for k in zs}
    assert gradient_similarity(model, zs, down, data, SPEC) == pytest.approx(1.0, abs=1e-9)
    # An ascent step: -1.
    up = {k: zs[k] + 0.1 * g[k] for k in zs}
    assert gradient_similarity(model, zs, up, data, SPEC) == pytest.approx(-1.0, abs=1e-9)
    # A descent step plus an orthogonal part of the same length: 1 / sqrt(2).
    gen = torch.Generator().manual_seed(3)
    r = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in g.items()}
    gg = sum(float((v * v).sum()) for v in g.values())
    rg = sum(float((r[k] * g[k]).sum()) for k in g)
    r = {k: r[k] - (rg / gg) * g[k] for k in r}  # now orthogonal to g
    scale = math.sqrt(gg / sum(float((v * v).sum()) for v in r.values()))
    mixed = {k: zs[k] - 0.1 * (g[k] + scale * r[k]) for k in zs}
    assert gradient_similarity(model, zs, mixed, data, SPEC) == pytest.approx(1 / math.sqrt(2), abs=1e-9)


def test_backward_knowledge_transfer_on_model(tiny):
    model, zs, data = tiny
    g = _reference_gradient(model, zs, data)
    gnorm = math.sqrt(sum(float((v * v).sum()) for v in g.values()))
    step = 1e-3 / gnorm  # a short descent step: ||w_zs - w_ft|| = 1e-3
    ft = {k: zs[k] - step * g[k] for k in zs}
    out = backward_knowledge_transfer(model, zs, ft, data, SPEC, alphas=(0.25, 0.5, 1.0))
    # Recompute each support loss independently and take the max of the defining ratio.
    dist = step * gnorm
    assert out["distance"] == pytest.approx(dist)
    ratios = []
    d = data[0]
    model.load_state_dict(zs, strict=False)
    with torch.no_grad():
        l0 = float(_reference_loss(model, d))
    for a in (0.25, 0.5, 1.0):
        model.load_state_dict({k: zs[k] + a * (ft[k] - zs[k]) for k in zs}, strict=False)
        with torch.no_grad():
            la = float(_reference_loss(model, d))
        ratios.append((l0 - la) / (a * dist))
    assert out["bkt"] == pytest.approx(max(ratios), rel=1e-5)
    # For a short descent step the ratio is the slope along -g/|g|, i.e. |g| (first order).
    assert out["bkt"] == pytest.approx(gnorm, rel=0.05)


def test_feature_cka_and_transfer_metrics(tiny):
    model, zs, data = tiny
    assert feature_cka(model, zs, zs, data[0].images, SPEC) == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(5)
    far = {k: v + 0.5 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in zs.items()}
    assert feature_cka(model, zs, far, data[0].images, SPEC) < 0.99
    out = transfer_metrics(model, zs, far, {"s": data[0]}, {"s": data[0].images}, SPEC, alphas=(0.5, 1.0))
    assert set(out) == {"distance", "support_tasks", "gradient_similarity", "backward_knowledge_transfer", "cka"}
    assert out["distance"] == pytest.approx(weight_distance(zs, far))
    assert -1.0 <= out["gradient_similarity"] <= 1.0

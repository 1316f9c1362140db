"""Training speed settings (issue 16): precision, TF32, gradient checkpointing, compile; what runs on a CPU."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from paint.errors import PaintError
from paint.models.clip import load_clip
from paint.models.heads import zeroshot_head
from paint.train import loop
from paint.train.finetune import FinetuneConfig, TrainingSet, finetune
from paint.train.recipes.base import FrozenHeadLoss
from paint.train.speed import checkpointing_on, checkpointing_scope, resolve_precision, resolve_tf32, tf32_scope
from paint.types import is_image_tower_key

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = dict(epochs=1, lr=3e-3, batch_size=16, warmup_steps=0, weight_decay=0.0, max_steps=2, seed=0, cpu=True)


def _setup(tiny_clip_dir):
    bundle = load_clip(str(tiny_clip_dir))
    head = zeroshot_head(bundle, ["red", "green", "blue"], ["a photo of the {}."])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 32)
    base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.float32)
    size = bundle.spec.crop
    imgs = base[labels][:, :, None, None] + rng.normal(0, 25, (32, 3, size, size))
    x = torch.from_numpy(imgs.clip(0, 255).astype(np.uint8))
    return bundle, [TrainingSet("colours", x, labels, head)]


def _tower(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if is_image_tower_key(k)}


@pytest.mark.parametrize(
    "requested, device, bf16_ok, expected",
    [
        ("auto", "cuda", True, "bf16"),  # Ampere and later: bf16 by default
        ("auto", "cuda", False, "no"),  # V100, T4: fp32
        ("auto", "cpu", True, "no"),  # a CPU run is unchanged
        ("auto", "mps", False, "no"),
        ("bf16", "cuda", False, "no"),  # asked for, not native: fp32 (the loop warns)
        ("bf16", "cpu", True, "bf16"),  # asked for on a CPU: CPU autocast
        ("fp16", "cuda", True, "fp16"),
        ("no", "cuda", True, "no"),
    ],
)
def test_resolve_precision_picks_bf16_only_on_cuda_with_bf16_unless_asked(requested, device, bf16_ok, expected):
    assert resolve_precision(requested, device, bf16_ok) == expected


def test_resolve_precision_refuses_an_unknown_value():
    with pytest.raises(PaintError, match="mixed_precision must be one of auto, no, fp16, bf16"):
        resolve_precision("fp8", "cuda", True)


def test_resolve_tf32_is_on_for_cuda_by_default_and_never_on_cpu():
    assert resolve_tf32(None, "cuda") is True and resolve_tf32(False, "cuda") is False
    assert resolve_tf32(None, "cpu") is False and resolve_tf32(True, "cpu") is False


def test_finetune_config_defaults_to_auto_precision_and_no_checkpointing_or_compile():
    cfg = FinetuneConfig()
    assert (cfg.mixed_precision, cfg.tf32, cfg.gradient_checkpointing, cfg.compile) == ("auto", None, False, False)
    ft = FinetuneConfig(tf32=False, gradient_checkpointing=True, compile=True)
    # the loop reads the fine-tuning config itself (one definition of the settings, no loop copy)
    assert set(loop.LoopSettings.__annotations__) <= set(FinetuneConfig.model_fields)
    assert (ft.tf32, ft.gradient_checkpointing, ft.compile) == (False, True, True)


@pytest.mark.parametrize("enabled", [True, False])
def test_tf32_scope_sets_the_flags_inside_and_restores_them_after(enabled):
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32, torch.get_float32_matmul_precision())
    with tf32_scope(enabled):
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (enabled, enabled)
    assert (matmul.allow_tf32, cudnn.allow_tf32, torch.get_float32_matmul_precision()) == before
    with pytest.raises(RuntimeError, match="boom"), tf32_scope(not before[0]):
        raise RuntimeError("boom")  # an error inside the run restores them too
    assert (matmul.allow_tf32, cudnn.allow_tf32) == before[:2]


def test_tf32_scope_none_leaves_the_flags_alone():
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = True
    try:
        with tf32_scope(None):
            assert matmul.allow_tf32 is True
        assert matmul.allow_tf32 is True
    finally:
        matmul.allow_tf32 = before


def test_a_cpu_run_records_fp32_without_tf32_and_leaves_the_flags(tiny_clip_dir):
    bundle, sets = _setup(tiny_clip_dir)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    res = finetune(bundle.model, sets, bundle.spec, FinetuneConfig(**BASE))
    assert res.runtime == {
        "device": "cpu",
        "mixed_precision": "no",
        "tf32": False,
        "gradient_checkpointing": False,
        "compile": False,
    }
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_auto_precision_on_cpu_gives_the_same_weights_as_fp32(tiny_clip_dir):
    bundle, sets = _setup(tiny_clip_dir)
    m2 = copy.deepcopy(bundle.model)
    finetune(bundle.model, sets, bundle.spec, FinetuneConfig(**BASE, mixed_precision="auto"))
    finetune(m2, sets, bundle.spec, FinetuneConfig(**BASE, mixed_precision="no"))
    a, b = _tower(bundle.model), _tower(m2)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_on_cpu_keeps_fp32_master_weights_and_stays_near_fp32(tiny_clip_dir):
    bundle, sets = _setup(tiny_clip_dir)
    zs = _tower(bundle.model)
    m2 = copy.deepcopy(bundle.model)
    r16 = finetune(bundle.model, sets, bundle.spec, FinetuneConfig(**BASE, mixed_precision="bf16"))
    r32 = finetune(m2, sets, bundle.spec, FinetuneConfig(**BASE, mixed_precision="no"))
    assert r16.runtime["mixed_precision"] == "bf16"
    a, b = _tower(bundle.model), _tower(m2)
    assert all(v.dtype == torch.float32 for v in a.values())  # autocast never converts the parameters
    # Stated tolerance: the bf16 run's mean loss within 2% of fp32's, and its weight change (theta_ft -
    # theta_zs) pointing the same way as fp32's, cosine >= 0.97. Not elementwise: Adam's first steps are
    # ~lr * sign(grad), so a parameter with a near-zero gradient can step either way under bf16 rounding.
    l16, l32 = r16.history[-1]["loss"], r32.history[-1]["loss"]
    assert abs(l16 - l32) <= 0.02 * abs(l32), (l16, l32)
    d16 = torch.cat([(a[k] - zs[k]).flatten() for k in zs])
    d32 = torch.cat([(b[k] - zs[k]).flatten() for k in zs])
    assert float(d32.norm()) > 0
    cos = float(F.cosine_similarity(d16, d32, dim=0))
    assert cos >= 0.97


def test_asking_bf16_where_it_is_not_native_warns_and_trains_in_fp32(tiny_clip_dir, monkeypatch, caplog):
    bundle, sets = _setup(tiny_clip_dir)
    monkeypatch.setattr(loop, "bf16_native", lambda device_type: False)
    with caplog.at_level(logging.WARNING, logger="paint.train.loop"):
        res = finetune(bundle.model, sets, bundle.spec, FinetuneConfig(**BASE, mixed_precision="bf16"))
    assert res.runtime["mixed_precision"] == "no"
    assert "bf16 was asked for but this cpu device has no native bf16; training in fp32" in caplog.text


def _loss_and_grads(model, sets, spec, checkpointing: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """One training-mode forward/backward of the frozen-head loss (the text tower frozen)."""
    for n, p in model.named_parameters():
        p.requires_grad_(is_image_tower_key(n))
    s = sets[0]
    loss_fn = FrozenHeadLoss([s.head.float()], spec, 0.0)
    batch = (s.images[:8], torch.as_tensor(s.labels[:8]), torch.zeros(8, dtype=torch.long))
    model.train()
    with checkpointing_scope(model, checkpointing):
        assert checkpointing_on(model) is checkpointing
        loss = loss_fn(model, batch)
        loss.backward()
        loss = loss.detach()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss), grads


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_and_is_undone(tiny_clip_dir):
    bundle, sets = _setup(tiny_clip_dir)
    model = bundle.model
    l0, g0 = _loss_and_grads(model, sets, bundle.spec, False)
    l1, g1 = _loss_and_grads(model, sets, bundle.spec, True)
    assert not checkpointing_on(model)  # off again after the scope
    assert l0 == pytest.approx(l1, rel=1e-6)
    assert g0.keys() == g1.keys() and any(is_image_tower_key(k) for k in g0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_through_finetune_with_lora_matches_and_is_recorded(tiny_clip_dir):
    bundle, sets = _setup(tiny_clip_dir)
    m2 = copy.deepcopy(bundle.model)
    cfg = dict(BASE, recipe={"name": "lora", "rank": 2})
    r1 = finetune(bundle.model, sets, bundle.spec, FinetuneConfig(**cfg, gradient_checkpointing=True))
    r0 = finetune(m2, sets, bundle.spec, FinetuneConfig(**cfg))
    assert r1.runtime["gradient_checkpointing"] is True and r0.runtime["gradient_checkpointing"] is False
    assert not checkpointing_on(bundle.model)
    assert r1.history[-1]["loss"] == pytest.approx(r0.history[-1]["loss"], rel=1e-5)
    a, b = _tower(bundle.model), _tower(m2)
    assert any(not torch.equal(a[k], _tower(load_clip(str(tiny_clip_dir)).model)[k]) for k in a)  # LoRA trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_on_a_model_without_it_is_refused():
    with pytest.raises(PaintError, match="Linear does not support gradient checkpointing"):
        with checkpointing_scope(torch.nn.Linear(2, 2), True):
            pass


def _inductor_skip() -> str | None:
    import os
    import shutil

    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "inductor needs a C++ compiler and none is on PATH"
    if os.environ.get("PAINT_TEST_INDUCTOR") != "1":
        return "inductor's C++ build takes ~30 s for the tiny CLIP here; set PAINT_TEST_INDUCTOR=1 to run it"
    return None


@pytest.mark.parametrize(
    "backend",
    [
        # aot_eager traces forward and backward through dynamo and AOTAutograd as inductor does, without
        # inductor's C++ build; inductor itself (the default backend) runs when asked.
        "aot_eager",
        pytest.param("inductor", marks=pytest.mark.skipif(_inductor_skip() is not None, reason=str(_inductor_skip()))),
    ],
)
def test_compile_trains_like_eager_and_hands_back_the_uncompiled_model(tiny_clip_dir, monkeypatch, backend):
    monkeypatch.setattr(loop, "COMPILE_BACKEND", backend)
    torch._dynamo.reset()
    bundle, sets = _setup(tiny_clip_dir)
    keys = list(bundle.model.state_dict())
    zs = _tower(bundle.model)
    m2 = copy.deepcopy(bundle.model)
    rc = finetune(bundle.model, sets, bundle.spec, FinetuneConfig(**BASE, compile=True))
    re = finetune(m2, sets, bundle.spec, FinetuneConfig(**BASE))
    assert rc.runtime["compile"] is True
    assert list(bundle.model.state_dict()) == keys  # no "_orig_mod." prefix
    assert getattr(bundle.model, "_compiled_call_impl", None) is None
    assert not any(getattr(m, "_compiled_call_impl", None) for m in bundle.model.modules())
    assert rc.history[-1]["loss"] == pytest.approx(re.history[-1]["loss"], rel=1e-4)
    # The trained change agrees with eager's to 1% (L2 over the tower). Not elementwise: inductor fuses
    # ops in another float order, and Adam's first steps (~lr * sign(grad)) turn a rounding difference
    # in a near-zero gradient into a full step either way (seen: 6.6e-5 on one element).
    a, b = _tower(bundle.model), _tower(m2)
    change = torch.cat([(b[k] - zs[k]).flatten() for k in zs])
    gap = torch.cat([(a[k] - b[k]).flatten() for k in zs])
    assert float(change.norm()) > 0 and float(gap.norm()) <= 1e-2 * float(change.norm())
    # The returned model is a plain module: eager forward works on it with no compile in the way.
    x = F.interpolate(torch.rand(2, 3, 8, 8), size=bundle.spec.crop)
    assert bundle.model.get_image_features(pixel_values=x).pooler_output.shape[0] == 2

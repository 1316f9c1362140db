import pytest
import torch

from paint.errors import PaintError
from paint.weights.ops import (
    add_task_vectors,
    check_compatible,
    interpolate,
    is_image_tower_key,
    task_vector,
)


def _sd(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "vision_model.w": torch.randn(4, 3, generator=g),
        "vision_model.h": torch.randn(5, generator=g).half(),
        "visual_projection.weight": torch.randn(2, 2, generator=g),
        "text_model.w": torch.randn(3, generator=g),
        "logit_scale": torch.tensor(2.6592),
        "vision_model.position_ids": torch.arange(7),
    }


def test_alpha_endpoints_are_bit_exact():
    a, b = _sd(0), _sd(1)
    b["vision_model.position_ids"] = torch.arange(7)
    at0, at1 = interpolate(a, b, 0.0), interpolate(a, b, 1.0)
    for k in a:
        assert torch.equal(at0[k], a[k]), k
        if a[k].is_floating_point():
            assert torch.equal(at1[k], b[k]), k


def test_midpoint_and_key_filter():
    a, b = _sd(0), _sd(1)
    mid = interpolate(a, b, 0.25, keys=is_image_tower_key)
    torch.testing.assert_close(mid["vision_model.w"], 0.75 * a["vision_model.w"] + 0.25 * b["vision_model.w"])
    assert torch.equal(mid["text_model.w"], a["text_model.w"])  # text tower untouched
    assert torch.equal(mid["logit_scale"], a["logit_scale"])
    assert mid["vision_model.h"].dtype == torch.float16


def test_identical_models_interpolate_to_themselves():
    a = _sd(3)
    for alpha in (0.0, 0.3, 0.5, 0.9, 1.0):
        out = interpolate(a, {k: v.clone() for k, v in a.items()}, alpha)
        for k in a:
            assert torch.equal(out[k], a[k]), (alpha, k)


def test_integer_buffers_untouched():
    a, b = _sd(0), _sd(1)
    b["vision_model.position_ids"] = torch.arange(7) * 3
    out = interpolate(a, b, 0.5)
    assert torch.equal(out["vision_model.position_ids"], a["vision_model.position_ids"])
    assert out["vision_model.position_ids"].dtype == torch.int64


def test_alpha_outside_unit_interval_needs_explicit_extrapolation():
    a, b = _sd(0), _sd(1)
    with pytest.raises(PaintError, match="outside"):
        interpolate(a, b, 1.5)
    out = interpolate(a, b, 1.5, allow_extrapolation=True)
    torch.testing.assert_close(out["text_model.w"], -0.5 * a["text_model.w"] + 1.5 * b["text_model.w"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("text_model.w"), "text_model.w"),
        (lambda d: d.__setitem__("vision_model.w", torch.zeros(4, 4)), "vision_model.w.*shape"),
        (
            lambda d: d.__setitem__("visual_projection.weight", torch.zeros(2, 2, dtype=torch.float64)),
            "visual_projection.weight.*dtype",
        ),
    ],
)
def test_mismatch_names_the_tensor(change, message):
    a, b = _sd(0), _sd(1)
    change(b)
    with pytest.raises(PaintError, match=message):
        check_compatible(a, b)


def test_task_vectors_round_trip():
    a, b = _sd(0), _sd(1)
    tau = task_vector(a, b)
    assert "vision_model.position_ids" not in tau
    back = add_task_vectors(a, [tau], [1.0])
    torch.testing.assert_close(back["vision_model.w"], b["vision_model.w"])
    same = add_task_vectors(a, [tau], [0.0])
    assert all(torch.equal(same[k], a[k]) for k in a)

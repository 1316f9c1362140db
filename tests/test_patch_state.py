"""The patch state is one explicit type: image tower, optional text tower, optional learned heads."""

from __future__ import annotations

import pytest
import torch

from paint.errors import PaintError
from paint.pipeline.pool import Line
from paint.types import PatchState, head_key
from paint.weights.ops import interpolate


def _state(seed: int) -> PatchState:
    g = torch.Generator().manual_seed(seed)
    return PatchState(
        {"vision_model.a": torch.randn(3, 4, generator=g), "visual_projection.weight": torch.randn(2, 4, generator=g)},
        text={"text_model.b": torch.randn(5, generator=g)},
        heads={"digits": torch.randn(10, 2, generator=g)},
    )


def test_a_state_says_what_it_holds_and_reads_back_from_its_flat_view():
    s = _state(0)
    assert s.covers == ("image tower", "text tower", "learned heads")
    assert set(s) == {"vision_model.a", "visual_projection.weight", "text_model.b", head_key("digits")}
    assert set(s.model_tensors()) == {"vision_model.a", "visual_projection.weight", "text_model.b"}  # no head
    back = PatchState.of(dict(s))
    assert (back.image.keys(), back.text.keys(), back.heads.keys()) == (s.image.keys(), s.text.keys(), s.heads.keys())
    assert PatchState.of(s) is s
    assert PatchState({"vision_model.a": torch.zeros(1)}).covers == ("image tower",)


def test_the_line_interpolates_every_part_as_the_flat_maths_would():
    zs, ft = _state(0), _state(1)
    line = Line.between(zs, ft)
    mid = line.at(0.3)
    assert isinstance(mid, PatchState) and mid.covers == zs.covers
    flat = interpolate(dict(zs), dict(ft), 0.3)
    assert set(mid) == set(flat)
    for k in flat:
        assert torch.equal(mid[k], flat[k]), k  # bit for bit: the parts are interpolated alike
    assert Line.between(dict(zs), dict(ft)).id == line.id  # a flat end keys the line the same


def test_a_line_with_mismatched_parts_is_refused():
    zs, ft = _state(0), _state(1)
    no_heads = PatchState(ft.image, ft.text)
    with pytest.raises(PaintError):
        Line.between(zs, no_heads).at(0.5)

"""Types and predicates shared by every layer (no paint imports here: everything may import this)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

StateDict = Mapping[str, torch.Tensor]
"""Tensors by parameter name, as ``nn.Module.state_dict()`` returns them (read-only use)."""

IMAGE_TOWER_PREFIXES = ("vision_model.", "visual_projection.")


def is_image_tower_key(key: str, prefixes: tuple[str, ...] = IMAGE_TOWER_PREFIXES) -> bool:
    """Whether a parameter belongs to the image tower (what PAINT fine-tunes).

    ``prefixes`` is the model family's (``paint.models.families``), passed in as data so that the
    weight maths never imports a model class; the default is CLIP's, whose ``vision_model.``
    also covers SigLIP's whole image tower.
    """
    return key.startswith(prefixes)


HEAD_PREFIX = "head::"
"""A learned classification head rides along in a state dict as ``head::<task>`` (C, D) (the lp-ft recipe):
interpolation, task vectors and merges treat it like any tensor, and evaluation scores that task with it."""


def head_key(task: str) -> str:
    return HEAD_PREFIX + task


def is_head_key(key: str) -> bool:
    return key.startswith(HEAD_PREFIX)

"""Types and predicates shared by every layer (no paint imports here: everything may import this)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

StateDict = Mapping[str, torch.Tensor]
"""Tensors by parameter name, as ``nn.Module.state_dict()`` returns them (read-only use)."""

IMAGE_TOWER_PREFIXES = ("vision_model.", "visual_projection.")


def is_image_tower_key(key: str) -> bool:
    """Keys of a transformers CLIPModel that belong to the image tower (what PAINT fine-tunes)."""
    return key.startswith(IMAGE_TOWER_PREFIXES)


HEAD_PREFIX = "head::"
"""A learned classification head rides along in a state dict as ``head::<task>`` (C, D) (the lp-ft recipe):
interpolation, task vectors and merges treat it like any tensor, and evaluation scores that task with it."""


def head_key(task: str) -> str:
    return HEAD_PREFIX + task


def is_head_key(key: str) -> bool:
    return key.startswith(HEAD_PREFIX)

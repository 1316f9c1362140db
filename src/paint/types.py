"""Types and predicates shared by every layer (no paint imports here: everything may import this)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

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


class PatchState(Mapping[str, torch.Tensor]):
    """The weights a patch moves, by part: the image tower, and what a recipe's line adds to it.

    ``image`` is the image tower (what PAINT fine-tunes); ``text`` the text tower and its projection
    when the recipe trains them too (flyp: the zero-shot heads are then rebuilt from the state's
    text tower); ``heads`` the patching tasks' learned classifiers, (C, D) by task name (lp-ft). A
    reader never guesses the parts from key names: the state says what it holds.

    The weight maths see it as one flat mapping (it *is* a ``Mapping[str, Tensor]``: the image and
    text tensors by parameter name, each head under ``head::<task>``), so interpolation, task
    vectors and merges treat every part alike, and :meth:`of` reads such a mapping back. On disk a
    state is a standard HF checkpoint (image and text tensors) plus a heads file.

    Example:
        >>> import torch
        >>> s = PatchState({"vision_model.w": torch.zeros(2)}, heads={"digits": torch.ones(10, 2)})
        >>> sorted(s), s.covers
        (['head::digits', 'vision_model.w'], ('image tower', 'learned heads'))
        >>> PatchState.of(dict(s)).heads.keys() == s.heads.keys()
        True
    """

    __slots__ = ("image", "text", "heads", "_flat")

    def __init__(
        self,
        image: Mapping[str, torch.Tensor],
        text: Mapping[str, torch.Tensor] | None = None,
        heads: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.image = dict(image)
        self.text = dict(text or {})
        self.heads = dict(heads or {})
        self._flat = {**self.image, **self.text, **{head_key(t): h for t, h in self.heads.items()}}

    @classmethod
    def of(
        cls,
        state: Mapping[str, torch.Tensor],
        is_image: Callable[[str], bool] = is_image_tower_key,
    ) -> PatchState:
        """``state`` itself if it is a PatchState, else the parts of a flat mapping (heads by their key)."""
        if isinstance(state, PatchState):
            return state
        image, text, heads = {}, {}, {}
        for k, v in state.items():
            if is_head_key(k):
                heads[k[len(HEAD_PREFIX) :]] = v
            elif is_image(k):
                image[k] = v
            else:
                text[k] = v
        return cls(image, text, heads)

    @property
    def covers(self) -> tuple[str, ...]:
        """The parts this state holds, in words."""
        parts = ("image tower",) + (("text tower",) if self.text else ()) + (("learned heads",) if self.heads else ())
        return parts

    def model_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that belong in a checkpoint of the model (image and text towers; no heads)."""
        return {**self.image, **self.text}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._flat[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._flat)

    def __len__(self) -> int:
        return len(self._flat)

    def __repr__(self) -> str:
        return f"PatchState({', '.join(self.covers)}: {len(self)} tensors)"

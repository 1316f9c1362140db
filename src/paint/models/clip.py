"""Load and save Hugging Face CLIP checkpoints (a local directory, or a hub id when online).

A :class:`ClipBundle` is the model with its tokenizer and image processor, plus what paint
derives from them: the image spec for preprocessing and an identity hash of the text side
(it keys the zero-shot head cache, so a head built for one model is never reused for another).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

import torch

from paint.data.preprocess import ImageSpec
from paint.errors import PaintError
from paint.types import is_image_tower_key
from paint.utils import atomic_path, hash_tensors, sha256_strings

DEFAULT_MODEL = "paint:default"  # the small CLIP pretrained on paint's synthetic world, shipped in the package


def default_model_path() -> Path:
    return Path(str(resources.files("paint") / "assets" / "default-model"))


def resolve_model_source(source: str) -> str:
    """Map ``paint:default`` to the shipped checkpoint; leave other sources as given."""
    return str(default_model_path()) if source == DEFAULT_MODEL else source


def _text_side(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not is_image_tower_key(k)}


@dataclass
class ClipBundle:
    """A CLIP model with its tokenizer and image processor."""

    model: "torch.nn.Module"
    tokenizer: object
    processor: object
    source: str
    spec: ImageSpec = field(init=False)

    def __post_init__(self) -> None:
        self.spec = ImageSpec.from_processor(self.processor)

    @cached_property
    def text_identity(self) -> str:
        """Hash of everything a zero-shot head depends on: text tower, projection, scale, vocab."""
        vocab = self.tokenizer.get_vocab()
        vocab_hash = sha256_strings(f"{k}\t{v}" for k, v in sorted(vocab.items()))
        return sha256_strings([hash_tensors(_text_side(self.model.state_dict())), vocab_hash])

    def image_tower_state(self) -> dict[str, torch.Tensor]:
        from paint.weights.ops import is_image_tower_key

        return {k: v for k, v in self.model.state_dict().items() if is_image_tower_key(k)}

    def image_tower_copy(self) -> dict[str, torch.Tensor]:
        """The image tower's tensors, detached and cloned: a snapshot that later training leaves alone."""
        return {k: v.detach().clone() for k, v in self.image_tower_state().items()}


def load_clip(source: str, revision: str | None = None, device: str | torch.device = "cpu") -> ClipBundle:
    """Load a CLIPModel, its tokenizer and its image processor.

    Args:
        source: a local checkpoint directory, ``paint:default``, or a hub id (needs network
            unless it is in the local HF cache; with ``HF_HUB_OFFLINE=1`` only the cache is used).
        revision: hub revision (branch, tag or commit).
        device: where the model goes.
    """
    from transformers import AutoTokenizer, CLIPModel
    from transformers.utils import logging as hf_logging

    src = resolve_model_source(source)
    path = Path(src)
    is_local = path.exists()
    if is_local and not (path / "config.json").is_file():
        raise PaintError(f"model directory {path} has no config.json; point to a Hugging Face CLIP checkpoint directory")
    if not is_local and (src.startswith((".", "/", "~")) or os.sep in src.strip("/").replace("/", "", 1)):
        raise PaintError(f"model path {src} does not exist")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a checkpoint load is quick; its bar is noise in paint's output
    try:
        model = CLIPModel.from_pretrained(src, revision=revision)
        tokenizer = AutoTokenizer.from_pretrained(src, revision=revision)
        processor = pil_image_processor_class().from_pretrained(src, revision=revision)
    except (OSError, ValueError) as e:
        where = "directory" if is_local else "hub id (offline, or not in the local cache?)"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PaintError(f"cannot load CLIP model from {where} {src!r}: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model.to(device).eval()
    return ClipBundle(model=model, tokenizer=tokenizer, processor=processor, source=src)


def pil_image_processor_class() -> type:
    """CLIP's PIL-backed image processor: the default one needs torchvision, absent here."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def image_features(model: "torch.nn.Module", pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings (B, D), not normalised."""
    pooled = model.vision_model(pixel_values=pixel_values).pooler_output  # (B, width)
    return model.visual_projection(pooled)


def text_features(model: "torch.nn.Module", input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Projected text embeddings (B, D), not normalised."""
    pooled = model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return model.text_projection(pooled)


def save_clip(bundle: ClipBundle, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a standard HF checkpoint (safetensors, config, tokenizer, processor) atomically.

    ``state_dict`` (e.g. the patched weights) replaces the model's own tensors in the file;
    the in-memory model is not modified.
    """
    from transformers.utils import logging as hf_logging

    out = Path(out_dir)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one small file: transformers' shard bar is noise here
    try:
        with atomic_path(out) as tmp:
            if state_dict is None:
                bundle.model.save_pretrained(tmp, safe_serialization=True)
            else:
                bundle.model.save_pretrained(tmp, state_dict=dict(state_dict), safe_serialization=True)
            bundle.tokenizer.save_pretrained(tmp)
            bundle.processor.save_pretrained(tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return out

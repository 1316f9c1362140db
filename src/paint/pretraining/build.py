"""Building a dual encoder for pretraining on the offline world: its config, tokenizer, model,
image processor, and the standard HF checkpoint it is exported as."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from pydantic import Field
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast, SiglipConfig, SiglipModel

from paint.config import StrictModel
from paint.errors import PaintError
from paint.models.families import family_of
from paint.models.siglip import image_processor_class, init_logit_parameters
from paint.utils import atomic_path
from paint.world import render as R
from paint.world.corpus import WORDS, corpus_pair
from paint.world.tasks import task_texts
from paint.world.tokenizer import train_tokenizer

LOGIT_SCALE_MAX = math.log(100.0)

DEFAULT_CLIP: dict[str, Any] = {
    "text_config": {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 32,
    },
    "vision_config": {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    },
    "projection_dim": 128,
}


class PretrainConfig(StrictModel):
    """Everything that determines a pretraining run (written next to its outputs)."""

    seed: int = 0
    family: Literal["clip", "siglip"] = "clip"  # siglip: SiglipModel + the sigmoid loss
    # The dual encoder's architecture (text_config, vision_config and, for CLIP, projection_dim).
    clip: dict[str, Any] = Field(default_factory=lambda: json.loads(json.dumps(DEFAULT_CLIP)))
    batch_size: int = Field(128, ge=2)
    steps_per_epoch: int = Field(250, ge=1)
    epochs: int = Field(24, ge=1)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(300, ge=0)
    grad_clip: float = 1.0
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16 on a CUDA GPU with bf16, else fp32
    cpu: bool = False
    tf32: bool | None = None  # TF32 matmuls on CUDA (None: on); ignored on a CPU
    gradient_checkpointing: bool = False
    compile: bool = False
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    tokenizer_captions: int = Field(20000, ge=1)  # corpus captions the tokenizer is trained on
    eval_tasks: list[str] = Field(default_factory=lambda: ["shapes", "colours", "rendered-digits", "backgrounds"])
    eval_images: int = Field(200, ge=0)  # per task, from its val split, after every epoch (0: skip)
    num_workers: int = Field(0, ge=0)  # DataLoader workers rendering batches in parallel
    threads: int | None = Field(None, ge=1)  # torch CPU threads (None: torch's default); 1 wins on a busy shared box


def _tokenizer_texts(cfg: PretrainConfig) -> list[str]:

    # The world's vocabulary is closed, so the first captions of the stream cover it; the task
    # prompts and word lists are added so no class name or template word maps to <unk>.
    texts = [corpus_pair(cfg.seed, i).caption for i in range(cfg.tokenizer_captions)]
    texts += task_texts()
    texts.append(" ".join(WORDS + R.COUNT_WORDS + tuple(str(i) for i in range(11))))
    return texts


def load_or_train_tokenizer(cfg: PretrainConfig, out_dir: Path):
    """The run's tokenizer: read from ``out_dir/tokenizer`` if there, else trained and saved."""

    path = out_dir / "tokenizer"
    max_len = int(cfg.clip.get("text_config", {}).get("max_position_embeddings", 32))
    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    tok = train_tokenizer(_tokenizer_texts(cfg), model_max_length=max_len)
    with atomic_path(path) as tmp:
        tok.save_pretrained(str(tmp))
    return tok


def build_clip(cfg: PretrainConfig, tokenizer) -> "torch.nn.Module":
    """A freshly initialised ``CLIPModel`` (or ``SiglipModel``) whose text side matches ``tokenizer``'s ids."""

    if cfg.family == "siglip":
        return build_siglip(cfg, tokenizer)
    spec = json.loads(json.dumps(cfg.clip))
    text = dict(spec.pop("text_config", {}))
    text.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # pooling reads the first eos; it must not be 2
    )
    if tokenizer.eos_token_id == 2:
        raise PaintError("the tokenizer's eos id is 2, which transformers' CLIP treats as legacy pooling")
    vision = dict(spec.pop("vision_config", {}))
    try:
        config = CLIPConfig(text_config=text, vision_config=vision, **spec)
    except (TypeError, ValueError) as e:
        raise PaintError(f"invalid clip config: {e}") from None
    torch.manual_seed(cfg.seed)
    return CLIPModel(config)


def build_siglip(cfg: PretrainConfig, tokenizer) -> "torch.nn.Module":
    """A freshly initialised ``SiglipModel`` whose text side matches ``tokenizer``'s ids.

    The text tower's output (``projection_size``) defaults to the image tower's width, which is
    the image embedding's size (SigLIP has no image projection).
    """

    spec = json.loads(json.dumps(cfg.clip))
    vision = dict(spec.pop("vision_config", {}))
    text = dict(spec.pop("text_config", {}))
    text.setdefault("projection_size", int(vision.get("hidden_size", 768)))
    text.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    try:
        config = SiglipConfig(text_config=text, vision_config=vision, **spec)
    except (TypeError, ValueError) as e:
        raise PaintError(f"invalid siglip config: {e}") from None
    torch.manual_seed(cfg.seed)
    model = SiglipModel(config)
    init_logit_parameters(model)
    return model


def build_image_processor(cfg: PretrainConfig, model: "torch.nn.Module"):
    """The PIL-backed CLIP image processor for the model's image size and the config's mean/std.

    transformers 5's default ``CLIPImageProcessor`` needs torchvision (absent here); its PIL
    twin gives the same pixels and loads everywhere.
    """
    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # older transformers: the default class is the PIL one
        from transformers import CLIPImageProcessor

    size = int(model.config.vision_config.image_size)
    if cfg.family == "siglip":  # SigLIP's processor: a square resize, no crop (same pixels on square images)
        return image_processor_class()(
            do_resize=True,
            size={"height": size, "width": size},
            resample=3,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(cfg.image_mean),
            image_std=list(cfg.image_std),
            do_convert_rgb=True,
        )
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        resample=3,  # bicubic, as paint.data.preprocess.clip_transform
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
        do_convert_rgb=True,
    )


def export_hf(model: "torch.nn.Module", tokenizer, processor, out: Path) -> Path:
    """Write a standard HF CLIP checkpoint (safetensors + tokenizer + processors) atomically.

    Both ``preprocessor_config.json`` (image processor) and ``processor_config.json``
    (``CLIPProcessor``) are written; both name the PIL image processor so that
    ``AutoImageProcessor``/``AutoProcessor``/the zero-shot pipeline need no torchvision.
    """

    family = family_of(model)
    if family.name == "clip":
        with torch.no_grad():
            model.logit_scale.clamp_(max=LOGIT_SCALE_MAX)
    with atomic_path(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        joint = getattr(transformers, family.processor_class)
        joint(image_processor=processor, tokenizer=tokenizer).save_pretrained(str(tmp))
    return out

"""Convert OpenAI CLIP and open_clip state dicts to the Hugging Face ``CLIPModel`` layout.

OpenAI's ``clip`` and open_clip's ViT CLIP models share one key layout (``visual.conv1``,
``visual.transformer.resblocks.N.attn.in_proj_weight``, ``token_embedding``, ...);
open_clip checkpoints may add a ``module.`` prefix (DDP) and wrap the dict in
``{"state_dict": ...}`` (unwrapped by :func:`paint.weights.io.load_legacy`).

The architecture is inferred from tensor shapes. Two things are not in the weights: the
number of attention heads (OpenAI's rule ``width // 64`` is the default) and the MLP
activation (QuickGELU for OpenAI weights and open_clip ``-quickgelu`` models, GELU for
most other open_clip models).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from paint.errors import PaintError
from paint.models.clip import TOKENIZER_FILES, pil_image_processor_class
from paint.utils import atomic_path
from paint.weights.io import file_sha256, load_state_dict
from paint.weights.writer import parse_size, write_state_dict_into

Format = Literal["auto", "openai", "open_clip"]

_RENAME = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: the transformers name
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
# Stored as (in, out) and applied as x @ proj; nn.Linear stores (out, in).
_TRANSPOSE = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_BLOCK_RENAME = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
}
# Non-weights that OpenAI's TorchScript state dicts and old open_clip checkpoints carry.
_IGNORED = {"input_resolution", "context_length", "vocab_size", "attn_mask", "visual.attn_mask"}
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def detect_format(sd: Mapping[str, torch.Tensor]) -> Literal["openai", "open_clip"]:
    """open_clip when the keys carry a DDP ``module.`` prefix, else openai (the layouts are otherwise equal)."""
    return "open_clip" if sd and all(k.startswith("module.") for k in sd) else "openai"


def strip_prefix(sd: Mapping[str, torch.Tensor], fmt: Format) -> tuple[dict[str, torch.Tensor], str]:
    """Drop open_clip's ``module.`` prefix; return the plain dict and the format used."""
    used = detect_format(sd) if fmt == "auto" else fmt
    if used == "open_clip":
        return {k.removeprefix("module."): v for k, v in sd.items()}, used
    return dict(sd), used


def _blocks(sd: Mapping[str, torch.Tensor], visual: bool) -> int:
    prefix = "visual." if visual else ""
    ids = {int(m.group(2)) for k in sd if (m := _BLOCK.match(k)) and (m.group(1) or "") == prefix}
    if ids != set(range(len(ids))):
        raise PaintError(f"{'image' if visual else 'text'} tower resblocks are not numbered 0..N-1: {sorted(ids)}")
    return len(ids)


def _heads(width: int, heads: int | None, tower: str) -> int:
    h = heads if heads is not None else max(1, width // 64)
    if h < 1 or width % h:
        raise PaintError(f"{tower} width {width} is not divisible by {h} heads; pass the right --{tower}-heads")
    return h


def infer_clip_config(
    sd: Mapping[str, torch.Tensor],
    vision_heads: int | None = None,
    text_heads: int | None = None,
    hidden_act: str = "quick_gelu",
) -> Any:
    """A ``transformers.CLIPConfig`` matching an OpenAI-layout state dict's shapes."""
    from transformers import CLIPConfig

    need = ["visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
            "positional_embedding", "text_projection", "logit_scale"]  # fmt: skip
    missing = [k for k in need if k not in sd]
    if missing:
        raise PaintError(f"not an OpenAI/open_clip ViT CLIP state dict: tensor {missing[0]!r} is missing")
    conv = sd["visual.conv1.weight"]  # (width, 3, patch, patch)
    v_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    n_pos = int(sd["visual.positional_embedding"].shape[0])  # grid**2 + 1 (class token)
    grid = math.isqrt(n_pos - 1)
    if grid * grid != n_pos - 1:
        raise PaintError(f"visual.positional_embedding has {n_pos} rows, not a square grid plus a class token")
    v_layers, t_layers = _blocks(sd, visual=True), _blocks(sd, visual=False)
    if v_layers == 0 or t_layers == 0:
        raise PaintError("state dict has no transformer resblocks for one of the towers")
    vocab, t_width = (int(s) for s in sd["token_embedding.weight"].shape)
    proj_dim = int(sd["visual.proj"].shape[1])
    if int(sd["text_projection"].shape[1]) != proj_dim:
        raise PaintError(
            f"visual.proj projects to {proj_dim} but text_projection to {int(sd['text_projection'].shape[1])}"
        )
    vision = {
        "hidden_size": v_width,
        "intermediate_size": int(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        "num_hidden_layers": v_layers,
        "num_attention_heads": _heads(v_width, vision_heads, "vision"),
        "image_size": grid * patch,
        "patch_size": patch,
        "projection_dim": proj_dim,
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-5,
    }
    text = {
        "vocab_size": vocab,
        "hidden_size": t_width,
        "intermediate_size": int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        "num_hidden_layers": t_layers,
        "num_attention_heads": _heads(t_width, text_heads, "text"),
        "max_position_embeddings": int(sd["positional_embedding"].shape[0]),
        "projection_dim": proj_dim,
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-5,
        # OpenAI's BPE puts <start> and <end> last; pooling at <end> is pooling at argmax(ids).
        "bos_token_id": vocab - 2,
        "eos_token_id": vocab - 1,
        "pad_token_id": 0,
    }
    return CLIPConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=proj_dim,
        logit_scale_init_value=float(sd["logit_scale"]),
    )


def convert_openai_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and split / transpose) OpenAI-layout tensors to transformers CLIPModel names.

    Raises:
        PaintError: a key that this mapping does not know (named), e.g. from a non-ViT or
            custom-text open_clip model.
    """
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key in _IGNORED:
            continue
        if key in _RENAME:
            out[_RENAME[key]] = t
        elif key in _TRANSPOSE:
            out[_TRANSPOSE[key]] = t.t().contiguous()
        elif m := _BLOCK.match(key):
            tower = "vision_model" if m.group(1) else "text_model"
            prefix = f"{tower}.encoder.layers.{m.group(2)}."
            rest = m.group(3)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]  # weight (3D, D) or bias (3D,): q, k, v stacked
                for name, part in zip(("q_proj", "k_proj", "v_proj"), t.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}.{kind}"] = part.contiguous()
            elif rest in _BLOCK_RENAME:
                out[prefix + _BLOCK_RENAME[rest]] = t
            else:
                raise PaintError(f"cannot convert tensor {key!r}: unknown resblock part (not a plain ViT CLIP?)")
        else:
            raise PaintError(f"cannot convert tensor {key!r}: not part of the OpenAI/open_clip ViT CLIP layout")
    return out


def check_against_model(sd: Mapping[str, torch.Tensor], config: Any) -> None:
    """The converted tensors are exactly the CLIPModel's parameters (names and shapes), checked on the meta device."""
    from transformers import CLIPModel

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in CLIPModel(config).state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing:
        raise PaintError(f"conversion produced no tensor {missing[0]!r} ({len(missing)} missing)")
    if extra:
        raise PaintError(f"conversion produced unexpected tensor {extra[0]!r}")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise PaintError(f"converted tensor {k!r} has shape {tuple(sd[k].shape)}, the model expects {shape}")


def convert_clip_state_dict(
    sd: Mapping[str, torch.Tensor],
    fmt: Format = "auto",
    vision_heads: int | None = None,
    text_heads: int | None = None,
    hidden_act: str = "quick_gelu",
) -> tuple[dict[str, torch.Tensor], Any, str]:
    """OpenAI / open_clip state dict -> (transformers CLIPModel state dict, CLIPConfig, format used)."""
    plain, used = strip_prefix(sd, fmt)
    config = infer_clip_config(plain, vision_heads, text_heads, hidden_act)
    out = convert_openai_keys(plain)
    check_against_model(out, config)
    return out, config, used


# Tokenizer and processor files worth copying from a reference HF CLIP directory.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                    "preprocessor_config.json", "processor_config.json")  # fmt: skip
_PROCESSOR_FILE = "preprocessor_config.json"

# OpenAI CLIP's preprocessing (clip.py's _transform): bicubic resize of the short side to the
# input size, centre crop, and these per-channel statistics of its training data.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def openai_image_processor(image_size: int) -> Any:
    """The image processor OpenAI CLIP (and open_clip's OpenAI-preprocessed models) expects at ``image_size``.

    A state dict carries no preprocessing; ``image_size`` (grid x patch from the weights, 224
    for ViT-B/32) is the only part that varies between OpenAI's ViT models.
    """

    return pil_image_processor_class()(
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=3,  # PIL.Image.BICUBIC
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )


def _check_tokenizer_source(path: Path) -> None:

    if not path.is_dir():
        raise PaintError(f"--tokenizer-from {path} is not a directory; point to an HF CLIP checkpoint directory")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise PaintError(f"--tokenizer-from {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")


def convert_checkpoint(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: Format = "auto",
    vision_heads: int | None = None,
    text_heads: int | None = None,
    hidden_act: str = "quick_gelu",
    max_shard_size: int | str = "2GB",
    overwrite: bool = False,
    tokenizer_from: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Convert a checkpoint file to an HF CLIP directory (weights, config.json, conversion record), atomically.

    Args:
        src: ``.safetensors`` or legacy ``.bin`` / ``.pt`` (``weights_only=True``) state dict.
        out_dir: output directory.
        fmt: ``openai``, ``open_clip`` or ``auto``.
        vision_heads: attention heads of the image tower (default width // 64).
        text_heads: attention heads of the text tower (default width // 64).
        hidden_act: ``quick_gelu`` or ``gelu``.
        max_shard_size: largest output shard.
        overwrite: replace an existing non-empty ``out_dir``.
        tokenizer_from: an HF CLIP directory whose tokenizer and processor files are copied
            (the source state dict has none).
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PaintError(f"output {out} exists and is not empty; pass --overwrite or choose another directory")
    if tokenizer_from is not None:
        _check_tokenizer_source(Path(tokenizer_from))
    shard = parse_size(max_shard_size)
    sd = load_state_dict(src)
    converted, config, used = convert_clip_state_dict(sd, fmt, vision_heads, text_heads, hidden_act)
    v, t = config.vision_config, config.text_config
    summary = {
        "source": str(src),
        "source_sha256": file_sha256(src) if Path(src).is_file() else None,
        "format": used,
        "tensors": len(converted),
        "vision_width": v.hidden_size,
        "vision_layers": v.num_hidden_layers,
        "vision_heads": v.num_attention_heads,
        "patch_size": v.patch_size,
        "image_size": v.image_size,
        "text_width": t.hidden_size,
        "text_layers": t.num_hidden_layers,
        "text_heads": t.num_attention_heads,
        "hidden_act": hidden_act,
        "projection_dim": config.projection_dim,
        "tokenizer_from": str(tokenizer_from) if tokenizer_from is not None else None,
    }
    with atomic_path(out) as tmp:
        tmp.mkdir()
        write_state_dict_into(converted, tmp, shard)
        config.save_pretrained(tmp)
        if tokenizer_from is not None:
            for name in _TOKENIZER_FILES:
                if (Path(tokenizer_from) / name).is_file():
                    shutil.copy2(Path(tokenizer_from) / name, tmp / name)
        if (tmp / _PROCESSOR_FILE).is_file():
            summary["image_processor"] = f"copied from {tokenizer_from}"
        else:  # a state dict carries no preprocessing: OpenAI's, so that the image side loads and matches
            openai_image_processor(v.image_size).save_pretrained(tmp)
            summary["image_processor"] = f"OpenAI CLIP ({v.image_size}px, bicubic, centre crop, OpenAI mean/std)"
        (tmp / "conversion.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def missing_tokenizer_note(out_dir: str | os.PathLike) -> str:
    """The one line ``paint convert`` prints when its output has no tokenizer (a state dict carries none)."""
    return (
        f"note: {out_dir} has no tokenizer, so paint cannot load it yet; re-run with --tokenizer-from <an HF CLIP "
        "directory with the same vocabulary, e.g. a download of openai/clip-vit-base-patch32>"
    )

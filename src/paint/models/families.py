"""The model-family registry: one small adapter per family of dual encoders paint can patch.

Every command (eval, patch, search, multi-task, merge, interpolate) reaches a model through its
family, looked up from the checkpoint's ``config.json`` ``model_type``; nothing else in paint
names a model class. An adapter says:

- how to load it (the transformers class) and which image processor reads its pixels;
- which parameters are the image tower (the only ones PAINT fine-tunes and interpolates; the
  text tower, the logit scale and any logit bias stay bit-identical), as *prefixes*: data that
  ``paint.weights`` and ``paint.selection`` can be handed without importing a model class;
- its ``image_features`` / ``text_features`` (pooled, projected, not normalised), how texts are
  padded for the text tower, and how logits and probabilities are formed:

  ====== ========================================== ============= ==========================
  family logits                                     probabilities paper
  ====== ========================================== ============= ==========================
  clip   exp(logit_scale) * cos                     softmax       Radford et al. 2021
  siglip exp(logit_scale) * cos + logit_bias        sigmoid       Zhai et al. 2023
  ====== ========================================== ============= ==========================

Saving is the same for every family (``save_pretrained`` of model, tokenizer and image processor:
:func:`paint.models.clip.save_clip`), so an adapter carries only the processor class that ties the
two together in ``processor_config.json``.

Example::

    from paint.models.families import family_of
    fam = family_of(bundle.model)                      # FAMILIES["siglip"] for a SiglipModel
    logits = fam.logits(bundle.model, normalize(fam.image_features(bundle.model, px)), head)
    probs = fam.probabilities(logits)                  # sigmoid for SigLIP, softmax for CLIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from paint.errors import PaintError
from paint.models import siglip
from paint.types import IMAGE_TOWER_PREFIXES, is_image_tower_key

FeatureFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Family:
    """One family of dual encoders: how paint loads, reads, scores and saves it."""

    name: str
    paper: str
    model_types: tuple[str, ...]  # config.json "model_type" values this adapter reads
    model_class: str  # transformers class that loads the whole dual encoder
    processor_class: str  # transformers processor written next to a pretrained model
    image_tower_prefixes: tuple[str, ...]
    image_features: FeatureFn  # (model, pixel_values) -> (B, D)
    text_features: FeatureFn  # (model, input_ids, attention_mask=None) -> (B, D)
    image_processor_class: Callable[[], type]
    text_padding: Literal["longest", "max_length"]
    probability: Literal["softmax", "sigmoid"]
    logit_bias: Callable[[torch.nn.Module], torch.Tensor] | None = None

    def is_image_tower_key(self, key: str) -> bool:
        """Whether a parameter belongs to the image tower (what PAINT trains and interpolates)."""
        return is_image_tower_key(key, self.image_tower_prefixes)

    def load_class(self) -> type:
        import transformers

        return getattr(transformers, self.model_class)

    def tokenize(self, tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        """Token ids (and the attention mask, when the tokenizer makes one) as the text tower expects.

        SigLIP pools the last position, so its texts are padded to ``max_length``; CLIP pools at
        the end-of-text token and is padded to the batch's longest text only.
        """
        padding: Any = "max_length" if self.text_padding == "max_length" else True
        enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
        return {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}

    def text_max_length(self, model: torch.nn.Module) -> int:
        return int(getattr(model.config.text_config, "max_position_embeddings", 77))

    def logits(self, model: torch.nn.Module, image_embeds: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """Class scores (B, C) of normalised image embeddings (B, D) against a head (C, D) carrying the scale.

        The bias (SigLIP) is one constant added to every score: argmax and cross-entropy are
        unchanged by it, sigmoid probabilities are not.
        """
        out = image_embeds @ head.t().to(image_embeds.device)
        if self.logit_bias is not None:
            out = out + self.logit_bias(model).to(out.device, out.dtype)
        return out

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, C): a softmax over classes (CLIP) or one sigmoid per class (SigLIP)."""
        return torch.sigmoid(logits) if self.probability == "sigmoid" else logits.softmax(dim=-1)


def _clip_image_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings (B, D), not normalised."""
    pooled = model.vision_model(pixel_values=pixel_values).pooler_output  # (B, width)
    return model.visual_projection(pooled)


def _clip_text_features(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Projected text embeddings (B, D), pooled at the end-of-text token, not normalised."""
    pooled = model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return model.text_projection(pooled)


def _clip_image_processor_class() -> type:
    """CLIP's PIL-backed image processor: the default one needs torchvision, absent here."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


CLIP = Family(
    name="clip",
    paper="Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision (2103.00020)",
    model_types=("clip",),
    model_class="CLIPModel",
    processor_class="CLIPProcessor",
    image_tower_prefixes=IMAGE_TOWER_PREFIXES,  # vision_model.*, visual_projection.*
    image_features=_clip_image_features,
    text_features=_clip_text_features,
    image_processor_class=_clip_image_processor_class,
    text_padding="longest",
    probability="softmax",
)

SIGLIP = Family(
    name="siglip",
    paper="Zhai et al. 2023, Sigmoid Loss for Language Image Pre-Training (2303.15343)",
    model_types=("siglip",),
    model_class="SiglipModel",
    processor_class="SiglipProcessor",
    image_tower_prefixes=("vision_model.",),  # the attention-pooling head is vision_model.head; no projection
    image_features=siglip.image_features,
    text_features=siglip.text_features,
    image_processor_class=siglip.image_processor_class,
    text_padding="max_length",
    probability="sigmoid",
    logit_bias=siglip.logit_bias,
)

FAMILIES: Mapping[str, Family] = {f.name: f for f in (CLIP, SIGLIP)}
_BY_MODEL_TYPE: Mapping[str, Family] = {t: f for f in FAMILIES.values() for t in f.model_types}


def family_for_model_type(model_type: str | None, source: str = "the checkpoint") -> Family:
    """The family that reads a ``config.json`` ``model_type``; one line naming what is supported otherwise."""
    fam = _BY_MODEL_TYPE.get(model_type or "")
    if fam is None:
        known = ", ".join(sorted(_BY_MODEL_TYPE))
        hint = " (SigLIP 2's variable-resolution inputs are not supported yet)" if model_type == "siglip2" else ""
        raise PaintError(f"{source} is a {model_type!r} model{hint}; paint reads the model types: {known}")
    return fam


def family_of(model: torch.nn.Module) -> Family:
    """The family of a loaded model (a wrapper such as DDP is looked through).

    Example:
        >>> from paint import family_of, load_model
        >>> family_of(load_model("paint:siglip").model).name
        'siglip'
        >>> family_of(load_model("paint:default").model).probability
        'softmax'
    """
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "module"):
        config = getattr(model.module, "config", None)
    return family_for_model_type(getattr(config, "model_type", None), type(model).__name__)


def image_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pooled, projected image embeddings (B, D) of any registered family, not normalised.

    Example:
        >>> import torch
        >>> from paint import image_features, load_clip
        >>> bundle = load_clip("paint:default")
        >>> image_features(bundle.model, torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 128])
    """
    return family_of(model).image_features(model, pixel_values)


def text_features(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Pooled, projected text embeddings (B, D) of any registered family, not normalised."""
    return family_of(model).text_features(model, input_ids, attention_mask)

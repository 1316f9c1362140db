"""SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", arXiv:2303.15343).

A ``transformers`` ``SiglipModel`` differs from a CLIP in four ways that paint must respect:

- the image tower is ``vision_model.*`` alone: its pooled output comes from an attention-pooling
  head inside the tower (``vision_model.head``), and there is no separate projection;
- the text tower pools its *last* position (``text_model.head`` projects it), so texts are padded
  to the maximum length, as SigLIP was trained and as transformers' zero-shot pipeline does;
- logits are ``exp(logit_scale) * cos + logit_bias`` and class probabilities are independent
  sigmoids of them, not a softmax;
- the image processor resizes to a square (``SiglipImageProcessor``), with no centre crop.

This module holds the SigLIP-specific pieces; :mod:`paint.models.families` registers them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# SigLIP's initial temperature and bias (paper, section 3.3): t' = log 10, b = -10, so that the
# many negatives of a batch start with a small loss instead of dominating the first steps.
INIT_LOGIT_SCALE = math.log(10.0)
INIT_LOGIT_BIAS = -10.0


def image_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pooled image embeddings (B, D) from the tower's attention-pooling head, not normalised."""
    return model.vision_model(pixel_values=pixel_values).pooler_output


def text_features(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Last-position text embeddings (B, D), not normalised.

    ``attention_mask`` is passed only when the tokenizer produced one: SigLIP's own tokenizer
    does not (pads are attended to, as in training), and matching the tokenizer is what makes
    paint's heads equal to the zero-shot pipeline's.
    """
    return model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def logit_bias(model: torch.nn.Module) -> torch.Tensor:
    """The learned scalar bias added to every logit (shape (1,)), detached: it never trains in paint."""
    return model.logit_bias.detach()


def sigmoid_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss over a batch; the i-th image and i-th text are the positive pair.

    ``-1/|B| * sum_i sum_j log sigmoid(z_ij * (t * <x_i, y_j> + b))`` with ``z_ij = 1`` on the diagonal
    and ``-1`` elsewhere (paper, algorithm 1): every pair is an independent binary problem, so no
    normalisation over the batch is needed.

    Args:
        image_embeds: (B, D) image embeddings, not normalised.
        text_embeds: (B, D) text embeddings, not normalised.
        logit_scale: log of the temperature t (a scalar parameter).
        logit_bias: the bias b (a scalar parameter).
    """
    img = F.normalize(image_embeds, dim=-1)
    txt = F.normalize(text_embeds, dim=-1)
    logits = logit_scale.exp() * img @ txt.t() + logit_bias  # (B, B): images x texts
    signs = 2 * torch.eye(len(logits), device=logits.device, dtype=logits.dtype) - 1  # +1 diagonal, -1 elsewhere
    return -F.logsigmoid(signs * logits).sum(dim=1).mean()


def image_processor_class() -> type:
    """SigLIP's PIL-backed image processor (the default one needs torchvision, absent here)."""
    import transformers

    return getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor


def init_logit_parameters(model: torch.nn.Module) -> None:
    """Set a freshly built SiglipModel's temperature and bias to the paper's initial values.

    transformers initialises both to zero (a temperature of 1 and no bias), which is meant for
    loading a checkpoint over, not for training from scratch.
    """
    with torch.no_grad():
        model.logit_scale.fill_(INIT_LOGIT_SCALE)
        model.logit_bias.fill_(INIT_LOGIT_BIAS)

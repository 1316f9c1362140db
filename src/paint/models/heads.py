"""Zero-shot classification heads from class names and prompt templates.

head[c] = normalize(mean_t normalize(text_embedding(template_t(class_c)))) * exp(logit_scale)

so ``logits = normalize(image_embedding) @ head.T`` are exactly CLIP's logits_per_image
(and, for a single template, transformers' zero-shot pipeline). The same combination of
templates serves every family (:mod:`paint.models.families`): SigLIP's own zero-shot
evaluation (big_vision) also averages the normalised embeddings of a class's prompts and
renormalises; its ``logit_bias`` is added by the family's ``logits`` (the head carries the scale
only), and its texts are padded to the maximum length (its text tower pools the last
position). Heads are cached on disk under
a key made of the model's text-side identity, the class names and the templates; each entry
stores a content hash of the head, checked on every read, so a corrupt entry (flipped bytes,
a truncated file) is rebuilt instead of silently skewing every accuracy computed with it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from paint.models.clip import ClipBundle
from paint.utils import atomic_path, hash_tensors, sha256_strings
from paint.weights.writer import save_safetensors_file

log = logging.getLogger(__name__)


def head_cache_key(bundle: ClipBundle, classnames: Sequence[str], templates: Sequence[str]) -> str:
    return sha256_strings(["head-v2", bundle.text_identity, *classnames, "\x1e", *templates])


@torch.no_grad()  # not inference_mode: the head is used in autograd graphs when fine-tuning
def build_head(
    bundle: ClipBundle, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """The zero-shot head (C, D), computed in one batched pass over all class x template texts.

    Example:
        >>> from paint import build_head, load_clip
        >>> head = build_head(load_clip("paint:default"), ["circle", "square"], ["a photo of a {}."])
        >>> head.shape
        torch.Size([2, 128])
    """
    model, tok, family = bundle.model, bundle.tokenizer, bundle.family
    texts = [t.format(c) for c in classnames for t in templates]  # class-major: (C*T,)
    max_len = family.text_max_length(model)
    device = next(model.parameters()).device
    chunks = []
    for i in range(0, len(texts), batch_size):
        enc = family.tokenize(tok, texts[i : i + batch_size], max_len)
        mask = enc.get("attention_mask")
        emb = family.text_features(model, enc["input_ids"].to(device), None if mask is None else mask.to(device))
        chunks.append(F.normalize(emb.float(), dim=-1))
    emb = torch.cat(chunks).view(len(classnames), len(templates), -1)  # (C, T, D)
    head = F.normalize(emb.mean(dim=1), dim=-1)  # (C, D)
    return head * model.logit_scale.exp().float()


def zeroshot_head(
    bundle: ClipBundle,
    classnames: Sequence[str],
    templates: Sequence[str],
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """The zero-shot head (C, D), from the cache when the same model, classes and templates were seen.

    Example:
        >>> from paint import TaskSpec, load_clip, load_task, zeroshot_head
        >>> bundle = load_clip("paint:default")
        >>> task, _ = load_task(TaskSpec(name="digits"))
        >>> zeroshot_head(bundle, task.classnames, task.templates).shape  # (classes, embedding dim)
        torch.Size([10, 128])
    """
    if cache_dir is None:
        return build_head(bundle, classnames, templates, batch_size)
    path = Path(cache_dir) / "heads" / f"{head_cache_key(bundle, classnames, templates)}.safetensors"
    if path.is_file():
        head, problem = read_cached_head(path, path.stem)
        if head is not None:
            return head
        log.warning("zero-shot head cache entry %s is corrupt (%s); rebuilding it", path, problem)
    head = build_head(bundle, classnames, templates, batch_size)
    with atomic_path(path) as tmp:
        save_safetensors_file({"head": head.contiguous()}, tmp, metadata={"key": path.stem, "sha256": _digest(head)})
    return head


def _digest(head: torch.Tensor) -> str:
    return hash_tensors({"head": head})


def read_cached_head(path: Path, key: str) -> tuple[torch.Tensor | None, str | None]:
    """A cached head and None, or None and why the entry cannot be trusted.

    The stored hash covers dtype, shape and bytes, and the stored key must be the file's own
    (a file copied under another key's name is not that key's head).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if "head" not in f.keys():
                return None, "no 'head' tensor"
            head = f.get_tensor("head")
    except (SafetensorError, OSError, ValueError) as e:
        return None, f"unreadable: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
    if "sha256" not in meta:
        return None, "no content hash"
    if meta.get("key") != key:
        return None, "stored under another key"
    if _digest(head) != meta["sha256"]:
        return None, "content hash mismatch"
    return head, None

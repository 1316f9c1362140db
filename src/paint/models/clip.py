"""Load and save Hugging Face dual-encoder checkpoints (a local directory, or a hub id when online).

The family (CLIP, SigLIP: :mod:`paint.models.families`) is read from the checkpoint's
``config.json``; everything else here is the same for every family. A :class:`ClipBundle`
(alias :data:`ModelBundle`) is the model with its tokenizer and image processor, plus what paint
derives from them: the image spec for preprocessing and an identity hash of the text side
(it keys the zero-shot head cache, so a head built for one model is never reused for another).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from paint.data.preprocess import ImageSpec
from paint.errors import PaintError
from paint.models.families import CLIP, Family, family_for_model_type, family_of
from paint.models.families import image_features as image_features  # re-exported: the generic, per-family one
from paint.models.families import text_features as text_features
from paint.utils import atomic_path, hash_tensors, sha256_strings
from paint.weights.io import LEGACY_WEIGHTS, SAFE_INDEX, SAFE_WEIGHTS, open_checkpoint, unsafe_pickle_error
from paint.weights.writer import new_file_mode

DEFAULT_MODEL = "paint:default"  # the small CLIP pretrained on paint's synthetic world, shipped in the package
# Models shipped in the package, pretrained on paint's synthetic world: name -> assets folder.
# paint:tiny, paint:default and paint:medium are the model ladder (one recipe, 0.14M to 2.6M parameters).
SHIPPED_MODELS = {
    "paint:tiny": "tiny-model",
    DEFAULT_MODEL: "default-model",
    "paint:medium": "medium-model",
    "paint:siglip": "default-siglip",
}
SHIPPED_PREFIX = "paint:"


def default_model_path(name: str = DEFAULT_MODEL) -> Path:
    return Path(str(resources.files("paint") / "assets" / SHIPPED_MODELS[name]))


def check_model_name(source: str) -> None:
    """Refuse a ``paint:`` name that is not a shipped model (one line listing the shipped ones)."""
    if source.startswith(SHIPPED_PREFIX) and source not in SHIPPED_MODELS:
        raise PaintError(f"unknown shipped model {source!r}; paint ships: {', '.join(SHIPPED_MODELS)}")


def resolve_model_source(source: str) -> str:
    """Map a shipped model's name (``paint:default``, ``paint:tiny`` ...) to its folder; leave others as given."""
    check_model_name(source)
    return str(default_model_path(source)) if source in SHIPPED_MODELS else source


@dataclass
class ClipBundle:
    """A dual encoder (any registered family) with its tokenizer and image processor.

    Example:
        >>> from paint import load_clip
        >>> bundle = load_clip("paint:default")
        >>> theta_zs = bundle.image_tower_copy()  # the tensors PAINT fine-tunes and interpolates
        >>> all(k.startswith(("vision_model.", "visual_projection.")) for k in theta_zs)
        True
    """

    model: "torch.nn.Module"
    tokenizer: object
    processor: object
    source: str
    spec: ImageSpec = field(init=False)

    def __post_init__(self) -> None:
        self.spec = ImageSpec.from_processor(self.processor)

    @property
    def family(self) -> Family:
        return family_of(self.model)

    @cached_property
    def text_identity(self) -> str:
        """Hash of everything a zero-shot head depends on: text tower, projection, scale (and bias), vocab."""
        vocab = self.tokenizer.get_vocab()
        vocab_hash = sha256_strings(f"{k}\t{v}" for k, v in sorted(vocab.items()))
        tower = self.family.is_image_tower_key
        text_side = {k: v for k, v in self.model.state_dict().items() if not tower(k)}
        return sha256_strings([hash_tensors(text_side), vocab_hash])

    def image_tower_state(self) -> dict[str, torch.Tensor]:
        tower = self.family.is_image_tower_key
        return {k: v for k, v in self.model.state_dict().items() if tower(k)}

    def image_tower_copy(self) -> dict[str, torch.Tensor]:
        """The image tower's tensors, detached and cloned: a snapshot that later training leaves alone."""
        return {k: v.detach().clone() for k, v in self.image_tower_state().items()}


# Files that hold a tokenizer's vocabulary (BPE json + merges, a fast-tokenizer json, or sentencepiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model")


def check_tokenizer_files(path: Path) -> None:
    """A local checkpoint has a tokenizer; else one line that says how to add one (``paint convert`` writes none)."""
    if any((path / name).is_file() for name in TOKENIZER_FILES):
        return
    origin = " (written by `paint convert` without --tokenizer-from)" if (path / "conversion.json").is_file() else ""
    raise PaintError(
        f"model directory {path} has no tokenizer{origin}: none of {', '.join(TOKENIZER_FILES)}; re-run "
        "`paint convert` with --tokenizer-from <an HF CLIP directory with the same vocabulary>, or copy that "
        "directory's tokenizer files in"
    )


def weights_file(path: Path) -> Path:
    """The weights file transformers reads from a local directory (for naming it in errors)."""

    for name in (SAFE_WEIGHTS, SAFE_INDEX, *LEGACY_WEIGHTS):
        if (path / name).is_file():
            return path / name
    return path


def check_loading_info(src: str, model: "torch.nn.Module", info: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose tensors do not exactly cover the model its config.json describes.

    transformers (5.x, with ``ignore_mismatched_sizes=True``) re-initialises mismatched and missing
    tensors at random and ignores unexpected ones, logging a warning that paint silences; a model
    that is partly random weights would give plausible-looking, wrong numbers. The first offending
    tensor is named in the model's own order, so the message is stable.
    """
    order = {k: i for i, k in enumerate(model.state_dict())}

    def first(keys: Any) -> list:
        return sorted(keys, key=lambda k: (order.get(k[0] if isinstance(k, tuple) else k, len(order)), str(k)))

    mismatched = first(info.get("mismatched_keys") or ())
    if mismatched:
        key, ckpt, want = mismatched[0]
        raise PaintError(
            f"checkpoint {src} does not match its config.json: tensor {key!r} has shape {tuple(ckpt)} in the weights "
            f"but {tuple(want)} in the model the config describes ({len(mismatched)} tensor(s) differ)"
        )
    missing = first(info.get("missing_keys") or ())
    if missing:
        raise PaintError(
            f"checkpoint {src} has no tensor {missing[0]!r} ({len(missing)} of the model's {len(order)} missing); "
            "refusing to fill them with random weights"
        )
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        raise PaintError(
            f"checkpoint {src} holds tensor {unexpected[0]!r} ({len(unexpected)} in all) that the model its "
            "config.json describes has no place for; the config and the weights disagree"
        )


ModelBundle = ClipBundle  # the family-neutral name


def checkpoint_family(source: str, revision: str | None = None) -> Family:
    """The family of a checkpoint, from its ``config.json`` ``model_type`` (a local file, or the hub's)."""
    path = Path(source)
    try:
        if path.is_dir():
            import json

            model_type = json.loads((path / "config.json").read_text()).get("model_type")
        else:
            from transformers import AutoConfig

            model_type = AutoConfig.from_pretrained(source, revision=revision).model_type
    except (OSError, ValueError, AttributeError) as e:
        where = "directory" if path.is_dir() else "hub id (offline, or not in the local cache?)"
        raise PaintError(f"cannot load model from {where} {source!r}: {_first_line(e)}") from None
    return family_for_model_type(model_type, source)


def check_local_checkpoint(path: Path) -> None:
    """Before transformers reads a local checkpoint: config.json, tokenizer files, readable safetensors headers."""

    if not (path / "config.json").is_file():
        raise PaintError(
            f"model directory {path} has no config.json; point to a Hugging Face CLIP or SigLIP checkpoint directory"
        )
    check_tokenizer_files(path)
    if (path / SAFE_INDEX).is_file() or (path / SAFE_WEIGHTS).is_file():
        open_checkpoint(path)  # headers only: a truncated or malformed file is named before transformers reads it


def load_clip(source: str, revision: str | None = None, device: str | torch.device = "cpu") -> ClipBundle:
    """Load a dual encoder of any registered family (CLIP, SigLIP), its tokenizer and its image processor.

    The family comes from the checkpoint's ``config.json``; ``load_model`` is the same function.

    A bad checkpoint ends in one :class:`PaintError` line that names the file, not a traceback:
    weights that would need arbitrary pickle (refused, nothing runs), a truncated or malformed
    safetensors file, weights that disagree with config.json or do not cover the model, no tokenizer.

    Args:
        source: a local checkpoint directory, ``paint:default`` / ``paint:siglip``, or a hub id (needs network
            unless it is in the local HF cache; with ``HF_HUB_OFFLINE=1`` only the cache is used).
        revision: hub revision (branch, tag or commit).
        device: where the model goes.

    Example:
        >>> from paint import load_clip
        >>> bundle = load_clip("paint:default")  # the shipped model; or a local HF directory, or a hub id
        >>> type(bundle.model).__name__, bundle.spec.crop
        ('CLIPModel', 32)
    """
    from safetensors import SafetensorError
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    src = resolve_model_source(source)
    path = Path(src)
    is_local = path.exists()
    if is_local:
        check_local_checkpoint(path)
    elif src.startswith((".", "/", "~")) or os.sep in src.strip("/").replace("/", "", 1):
        raise PaintError(f"model path {src} does not exist")
    named = weights_file(path) if is_local else src
    family = checkpoint_family(src, revision)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a checkpoint load is quick; its bar is noise in paint's output
    try:
        model, info = family.load_class().from_pretrained(
            src, revision=revision, output_loading_info=True, ignore_mismatched_sizes=True
        )
        check_loading_info(src, model, info)
        tokenizer = AutoTokenizer.from_pretrained(src, revision=revision)
        processor = family.image_processor_class().from_pretrained(src, revision=revision)
    except pickle.UnpicklingError as e:
        raise unsafe_pickle_error(named, e) from None
    except SafetensorError as e:
        raise PaintError(f"{named} is not a readable safetensors file ({_first_line(e)})") from None
    except RuntimeError as e:  # transformers' own load errors (state dict, weight conversion); others are bugs
        if not str(e).startswith(("Error(s) in loading state_dict", "We encountered some issues")):
            raise
        raise PaintError(f"cannot load {family.name} weights from {named}: {_first_line(e)}") from None
    except (OSError, ValueError) as e:
        where = "directory" if is_local else "hub id (offline, or not in the local cache?)"
        raise PaintError(f"cannot load {family.name} model from {where} {src!r}: {_first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model.to(device).eval()
    return ClipBundle(model=model, tokenizer=tokenizer, processor=processor, source=src)


load_model = load_clip  # the family-neutral name


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def pil_image_processor_class() -> type:
    """CLIP's PIL-backed image processor: the default one needs torchvision, absent here."""

    return CLIP.image_processor_class()


def save_clip(bundle: ClipBundle, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a standard HF checkpoint (safetensors, config, tokenizer, processor) atomically.

    ``state_dict`` (e.g. the patched weights) replaces the model's own tensors in the file;
    the in-memory model is not modified.

    Example:
        >>> from paint import load_clip, save_clip
        >>> bundle = load_clip("paint:default")
        >>> save_clip(bundle, "runs/copy-of-default")  # doctest: +SKIP
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
            mode = new_file_mode()
            for f in tmp.glob("*.safetensors"):  # safetensors writes 0600; the other files get the umask's mode
                os.chmod(f, mode)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return out

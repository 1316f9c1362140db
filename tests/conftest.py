"""Shared fixtures: a tiny random CLIP checkpoint (2 layers, hidden 32) built in milliseconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_WORDS = (
    "a photo of the number zero one two three four five six seven eight nine "
    'this is red green blue circle square triangle cat dog : . "'
).split()


def make_tokenizer(words=TINY_WORDS, max_length: int = 16):
    """A real HF fast tokenizer (word level, lower-cased) with bos/eos/pad/unk."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words)))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def make_tiny_clip(out: Path, seed: int = 0, hidden: int = 32, image_size: int = 16, layers: int = 2) -> Path:
    """Write a random CLIP checkpoint (model, tokenizer, image processor) to ``out``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from paint.models.clip import pil_image_processor_class

    tok = make_tokenizer()
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=4,
        ),
        projection_dim=16,
    )
    model = CLIPModel(cfg).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    pil_image_processor_class()(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "model")


@pytest.fixture(scope="session")
def tiny_clip_dir_b(tmp_path_factory) -> Path:
    """A second tiny CLIP of the same architecture, different weights."""
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip-b") / "model", seed=1)


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread while a test runs: tiny models gain nothing from more, and on a busy
    shared machine a second thread only waits on the first (measured 85 s vs 5 s for the typographic tests)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _own_hash_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty sha256 cache of its own (``paint merge`` writes one; never the user's)."""
    monkeypatch.setenv("PAINT_CACHE", str(tmp_path_factory.mktemp("paint-cache")))

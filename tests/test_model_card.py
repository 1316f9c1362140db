"""The patched model's card cites the paper with a real link, not a placeholder URL."""

from __future__ import annotations

import re

from paint.pipeline.report import model_card


def test_model_card_links_the_paper_and_no_placeholder():
    summary = {
        "test": {"digits": {"role": "patch", "zeroshot": 0.2, "finetuned": 0.9, "patched": 0.85}},
        "alpha": 0.6,
        "selection": {"rule": "max patch s.t. support within 1 point"},
        "model": "paint:default",
    }
    card = model_card(summary, "model: paint:default\n")
    links = re.findall(r"\]\((https?://[^)]*)\)", card)
    assert links == ["https://arxiv.org/abs/2208.05592"], links
    assert "arXiv:2208.05592" in card and "Patching open-vocabulary models" in card


def test_model_card_names_the_model_family():
    summary = {
        "test": {"digits": {"role": "patch", "zeroshot": 0.2, "finetuned": 0.9, "patched": 0.85}},
        "alpha": 0.3,
        "selection": {"rule": "constrained-mean"},
        "model": "paint:siglip",
        "model_family": "siglip",
    }
    card = model_card(summary, "model: paint:siglip\n")
    assert "# Patched SigLIP: digits" in card and "tags: [siglip," in card and "CLIP:" not in card
    assert "# Patched CLIP: digits" in model_card({**summary, "model_family": "clip"}, "")

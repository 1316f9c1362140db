"""The offline world: deterministic generator, tasks, captions, tokenizer, contact sheet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paint.data.task import ImageSplit
from paint.errors import PaintError
from paint.world import captions as C
from paint.world import glyphs as G
from paint.world import render as R
from paint.world.corpus import GENERATOR_VERSION, corpus_batch, corpus_pair
from paint.world.tasks import SUPPORT_TASKS, WORLD_TASKS, world_task


def test_corpus_is_deterministic_by_seed_and_index():
    imgs_a, caps_a = corpus_batch(seed=0, start=100, size=24)
    imgs_b, caps_b = corpus_batch(seed=0, start=100, size=24)
    assert imgs_a.shape == (24, 3, 32, 32) and imgs_a.dtype == np.uint8
    assert np.array_equal(imgs_a, imgs_b) and caps_a == caps_b
    imgs_c, caps_c = corpus_batch(seed=1, start=100, size=24)
    assert not np.array_equal(imgs_a, imgs_c)
    assert caps_a != caps_c
    # A pair does not depend on which batch it was drawn in.
    single = corpus_pair(0, 105)
    assert np.array_equal(np.asarray(single.image).transpose(2, 0, 1), imgs_a[5])
    assert single.caption == caps_a[5]


# md5 of corpus_batch(seed=0, start=0, size=64)'s pixels and of its 64 captions (joined by newlines),
# and its first captions. The shipped default model was pretrained on this corpus; a change here
# must bump GENERATOR_VERSION and rebuild it. (The captions' md5 catches caption-only changes,
# which leave the pixels and often the first captions as they were.)
CORPUS_PIXELS_MD5 = "8fb6f5079b537c923bc432b1d31d416e"
CORPUS_CAPTIONS_MD5 = "1ab0c79856bfda6b75a0f36934406110"
CORPUS_FIRST_CAPTIONS = [
    "a star",
    "a drawing of a diamond on a checkered background",
    "a photo of 9 objects.",
    "the number five",
]


def test_corpus_is_pinned_to_the_one_the_default_model_saw():
    import hashlib

    imgs, caps = corpus_batch(seed=0, start=0, size=64)
    assert GENERATOR_VERSION == "world-v3c"
    assert hashlib.md5(imgs.tobytes()).hexdigest() == CORPUS_PIXELS_MD5
    assert hashlib.md5("\n".join(caps).encode("utf-8")).hexdigest() == CORPUS_CAPTIONS_MD5
    assert caps[:4] == CORPUS_FIRST_CAPTIONS


def test_written_class_names_are_often_captioned_as_the_object():
    # world-v3: a written class name is sometimes captioned as the thing it names, in the
    # wording of the tasks' prompts (what makes the model susceptible to typographic attacks).
    pairs = [p for p in (corpus_pair(5, i) for i in range(4000)) if p.kind == "word"]
    named = [p for p in pairs if p.attributes["word"] in R.SHAPES]
    assert len(named) > 40
    objectish = [
        p
        for p in named
        if "word" not in p.caption
        and "text" not in p.caption
        and "sign" not in p.caption
        and "label" not in p.caption
        and "written" not in p.caption
    ]
    assert 0.45 <= len(objectish) / len(named) <= 0.75, len(objectish) / len(named)
    # Object phrasing names only the written word, never the shape under it.
    for p in objectish:
        assert p.attributes["word"] in p.caption
        if p.attributes["shape"] not in (None, p.attributes["word"]):
            assert p.attributes["shape"] not in p.caption.split()
    # Words that name nothing in the world keep text phrasing only.
    others = [p for p in pairs if p.attributes["word"] in ("cat", "dog", "stop", "hello")]
    assert others and all(
        any(k in p.caption for k in ("word", "text", "sign", "label", "written")) or p.attributes["shape"] in p.caption
        for p in others
    )
    rng = np.random.default_rng(0)
    assert C.object_phrase("red", "colour", rng) in {t.format(a="a", colour="red") for t in C.COLOUR_ONLY_TEMPLATES}
    assert "seven" in C.object_phrase("seven", "digit", rng)
    with pytest.raises(ValueError):
        C.object_phrase("red", "smell", rng)


def test_labelled_shapes_are_drawn_like_the_attacked_task_images():
    # world-v3c: a word over a shape is on any background, at either shape size, and written
    # the way paint.studies.typographic writes attacks (so the corpus shows the attack's pixels).
    pairs = [p for p in (corpus_pair(5, i) for i in range(3000)) if p.kind == "word" and p.attributes["shape"]]
    assert len(pairs) > 150
    assert {p.attributes["background"] for p in pairs} == set(R.BACKGROUNDS)


def test_counting_task_scatters_objects_off_the_grid():
    rng = np.random.default_rng(0)
    for n in (1, 7, 10):
        centres, radii = R._scatter(n, rng)
        assert len(centres) == n
        pts = np.array(centres)
        if n > 1:
            d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) + np.eye(n) * 99
            assert d.min() >= 2 * max(radii)
    with pytest.raises(ValueError):
        R.render_count(3, "circle", "red", "plain", rng, layout="spiral")


def test_corpus_covers_every_kind_and_never_uses_heldout_fonts():
    pairs = [corpus_pair(3, i) for i in range(300)]
    assert {p.kind for p in pairs} == {"shape", "digit", "word", "count"}
    fonts = {p.attributes["font"] for p in pairs if p.kind == "digit"}
    assert fonts and fonts <= set(R.PRETRAIN_FONTS)
    assert {p.attributes["style"] for p in pairs if p.kind == "digit"} == set(R.DIGIT_STYLES)
    counts = [p for p in pairs if p.kind == "count"]
    for p in counts:
        n = p.attributes["count"]
        assert 1 <= n <= 10
        assert str(n) in p.caption.split() or R.COUNT_WORDS[n - 1] in p.caption.split() or "objects" in p.caption


def test_shape_captions_name_the_colour_only_sometimes():
    rng = np.random.default_rng(0)
    caps = [C.shape_caption("star", "red", "plain", "small", rng) for _ in range(3000)]
    frac = np.mean(["red" in c for c in caps])
    assert 0.2 <= frac <= 0.35, frac
    assert np.mean(["star" in c for c in caps]) > 0.8


def test_world_tasks_are_lazy_deterministic_and_balanced():
    assert set(SUPPORT_TASKS) <= set(WORLD_TASKS)
    assert {"counting", "novel-font-digits"} <= set(WORLD_TASKS)
    for name in WORLD_TASKS:
        task = world_task(name, seed=0, sizes={"train": 40, "val": 20, "test": 30})
        test = task.split("test")
        assert isinstance(test, ImageSplit)
        assert (
            len(test) == 30
            and GENERATOR_VERSION in test.identity
            and "seed0" in test.identity
            and "test" in test.identity
        )
        labels = test.labels
        assert labels.min() >= 0 and labels.max() < len(task.classnames)
        assert np.bincount(labels).max() - np.bincount(labels, minlength=len(task.classnames)).min() <= 1
        a, b = np.asarray(test.image(3)), np.asarray(test.image(3))
        assert a.shape == (32, 32, 3) and np.array_equal(a, b)
        other = world_task(name, seed=1, sizes={"test": 30}).split("test")
        assert other.identity != test.identity
        assert not np.array_equal(a, np.asarray(other.image(3))) or labels[3] != other.labels[3]
        # Splits of one task draw different images.
        assert not np.array_equal(np.asarray(task.split("val").image(0)), np.asarray(task.split("train").image(0)))


def test_world_task_defaults_and_errors():
    task = world_task("shapes")
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 2000, "val": 500, "test": 1000}
    assert task.classnames == R.SHAPES and all("{}" in t for t in task.templates)
    assert world_task("counting").classnames[:3] == ("one", "two", "three")
    with pytest.raises(PaintError, match="unknown world task"):
        world_task("nope")
    with pytest.raises(PaintError, match="split 'test' needs at least one image"):
        world_task("shapes", sizes={"test": 0})


def test_render_helpers():
    rng = np.random.default_rng(0)
    blank = R.render_background("plain", rng)
    worded = np.asarray(G.render_word(blank, "star", (255, 0, 0), font=R.font_names()[0]))
    assert worded.shape == (32, 32, 3) and not np.array_equal(worded, np.asarray(blank))
    assert (worded[..., 0].astype(int) - worded[..., 1]).max() > 100  # red ink is on the image
    for n in (1, 5, 10):
        img = np.asarray(R.render_count(n, "circle", "blue", "plain", np.random.default_rng(n)))
        assert img.shape == (32, 32, 3)
    with pytest.raises(ValueError):
        R.render_count(0, "circle", "blue", "plain", rng)
    for name in R.font_names():
        assert (R.font_dir() / name).is_file(), name
    assert not set(R.PRETRAIN_FONTS) & set(R.HELDOUT_FONTS)


def test_scans_have_the_digits_grey_levels():
    from PIL import Image

    for style in ("scan", "bold-scan", "slanted-scan"):
        img = np.asarray(G.render_digit(3, R.PRETRAIN_FONTS[0], style, np.random.default_rng(0)))
        assert img.shape == (32, 32, 3)
        assert img[..., 0].mean() < 128  # bright ink on a dark ground, like the 8x8 scans
        assert np.array_equal(img[..., 0], img[..., 1])
        # It is an 8x8 image with 17 grey levels, scaled up: going back to 8x8 loses little.
        small = Image.fromarray(img[..., 0]).resize((8, 8), Image.BOX)
        back = np.asarray(small.resize((32, 32), Image.BICUBIC), dtype=float)
        assert np.abs(back - img[..., 0]).mean() < 20
    assert not set(R.HELDOUT_DIGIT_STYLES) & set(R.DIGIT_STYLES)


def test_tokenizer_round_trips_and_puts_eos_where_clip_pools():
    from transformers import CLIPTextConfig, CLIPTextModel

    from paint.world.tokenizer import EOS_ID, train_tokenizer

    tok = train_tokenizer(["a photo of a star.", 'the number: "seven"', "three red circles"], model_max_length=16)
    assert tok.eos_token_id == EOS_ID != 2 and tok.pad_token_id != tok.eos_token_id
    enc = tok(["A photo of a STAR.", "three circles"], padding=True)
    ids = enc["input_ids"]
    assert tok.decode(ids[0], skip_special_tokens=True) == "a photo of a star ."
    assert ids[0][0] == tok.bos_token_id and ids[0][-1] == tok.eos_token_id
    assert ids[1].index(tok.eos_token_id) == 3 and ids[1][4:] == [tok.pad_token_id] * (len(ids[1]) - 4)
    assert tok("zebra")["input_ids"][1] == tok.unk_token_id
    # transformers' CLIP pools the hidden state at the first eos token.
    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = CLIPTextModel(cfg).eval()
    batch = tok(["A photo of a STAR.", "three circles"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    assert torch.allclose(out.pooler_output[1], out.last_hidden_state[1, 3])


def test_contact_sheet_writes_a_png(tmp_path):
    from PIL import Image

    from paint.world.sheet import ROWS, contact_sheet, sample_rows

    rows = sample_rows(seed=0, per_row=2)
    assert set(rows) == {title for title, _ in ROWS} and all(len(v) == 2 for v in rows.values())
    out = contact_sheet(tmp_path / "sheet.png", seed=0, per_row=2)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 100

import logging
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from paint.errors import PaintError
from paint.models.clip import load_clip, save_clip
from paint.models.heads import head_cache_key, zeroshot_head


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)) for i in range(n)]


def test_save_load_round_trip_is_exact(tiny_clip_dir, tmp_path):
    bundle = load_clip(str(tiny_clip_dir))
    out = save_clip(bundle, tmp_path / "copy")
    again = load_clip(str(out))
    a, b = bundle.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.tokenizer.get_vocab() == bundle.tokenizer.get_vocab()
    assert again.spec == bundle.spec
    from transformers import CLIPModel

    CLIPModel.from_pretrained(out)  # loads with plain transformers


def test_missing_model_path_is_a_user_error(tmp_path):
    with pytest.raises(PaintError, match="does not exist"):
        load_clip(str(tmp_path / "no" / "such" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PaintError, match="config.json"):
        load_clip(str(tmp_path / "empty"))


def test_head_matches_zero_shot_pipeline(tiny_clip_dir):
    """With one template, our head gives the pipeline's probabilities on the same images."""
    from transformers import pipeline

    from paint.data.preprocess import clip_transform, normalize
    from paint.evaluation.results import logits_for

    bundle = load_clip(str(tiny_clip_dir))
    classes = ["cat", "dog", "circle", "square"]
    template = "a photo of the {}."
    images = _images(4)
    pipe = pipeline("zero-shot-image-classification", model=str(tiny_clip_dir), device="cpu")
    head = zeroshot_head(bundle, classes, [template])
    pixels = torch.stack([torch.from_numpy(clip_transform(im, bundle.spec.resize, bundle.spec.crop)) for im in images])
    with torch.inference_mode():
        probs = bundle.family.probabilities(
            logits_for(bundle.model, head, normalize(pixels, bundle.spec.mean, bundle.spec.std))
        )
    assert bundle.family.name == "clip" and not bundle.spec.squash  # CLIP's processor crops
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(images)))  # a softmax over the classes
    for img, p in zip(images, probs):
        out = pipe(img, candidate_labels=classes, hypothesis_template=template)
        ref = {d["label"]: d["score"] for d in out}
        ours = {c: float(p[i]) for i, c in enumerate(classes)}
        assert max(ref, key=ref.get) == max(ours, key=ours.get)
        for c in classes:
            assert abs(ref[c] - ours[c]) < 1e-4, (c, ref[c], ours[c])


def test_head_cache_is_keyed_by_model_classes_and_templates(tiny_clip_dir, tiny_clip_dir_b, tmp_path):
    a, b = load_clip(str(tiny_clip_dir)), load_clip(str(tiny_clip_dir_b))
    classes, templates = ["cat", "dog"], ["a photo of the {}."]
    assert head_cache_key(a, classes, templates) != head_cache_key(b, classes, templates)
    assert head_cache_key(a, classes, templates) != head_cache_key(a, ["dog", "cat"], templates)
    assert head_cache_key(a, classes, templates) != head_cache_key(a, classes, ["this is a {}."])
    h1 = zeroshot_head(a, classes, templates, cache_dir=tmp_path)
    files = list((tmp_path / "heads").iterdir())
    assert len(files) == 1
    h2 = zeroshot_head(a, classes, templates, cache_dir=tmp_path)
    assert torch.equal(h1, h2)
    hb = zeroshot_head(b, classes, templates, cache_dir=tmp_path)
    assert not torch.equal(h1, hb)  # another model never reuses the first model's head
    assert len(list((tmp_path / "heads").iterdir())) == 2


def test_head_is_normalized_mean_times_logit_scale(tiny_clip_dir):
    bundle = load_clip(str(tiny_clip_dir))
    head = zeroshot_head(bundle, ["cat", "dog", "red"], ["a photo of the {}.", "this is {}."])
    norms = head.norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, float(bundle.model.logit_scale.detach().exp())))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_checkpoint_files_get_the_umask_mode(tiny_clip_dir, tmp_path, umask):
    """safetensors creates its file 0600; model.safetensors must be as readable as config.json beside it."""
    bundle = load_clip(str(tiny_clip_dir))
    old = os.umask(umask)
    try:
        out = save_clip(bundle, tmp_path / "copy")
        head = zeroshot_head(bundle, ["cat", "dog"], ["a photo of the {}."], cache_dir=tmp_path / "cache")
        assert head.shape[0] == 2
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == want and modes["config.json"] == want, modes
    (entry,) = (tmp_path / "cache" / "heads").iterdir()
    assert entry.stat().st_mode & 0o777 == want


def _corrupt_flip(path):
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) - 64, len(raw), 4):  # flip bytes inside the head's data (the file's tail)
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def _corrupt_truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])


def _corrupt_header(path):
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + path.read_bytes()[24:])


@pytest.mark.parametrize("corrupt", [_corrupt_flip, _corrupt_truncate, _corrupt_header])
def test_corrupt_head_cache_entry_is_rebuilt_with_one_warning(tiny_clip_dir, tmp_path, caplog, corrupt):
    bundle = load_clip(str(tiny_clip_dir))
    classes, templates = ["cat", "dog", "red", "blue"], ["a photo of the {}.", "this is {}."]
    fresh = zeroshot_head(bundle, classes, templates, cache_dir=tmp_path)
    (entry,) = (tmp_path / "heads").iterdir()
    corrupt(entry)
    with caplog.at_level(logging.WARNING, logger="paint.models.heads"):
        again = zeroshot_head(bundle, classes, templates, cache_dir=tmp_path)
    assert torch.equal(again, fresh)  # the rebuilt head, not the corrupt bytes
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(entry) in warnings[0] and "rebuilding" in warnings[0], warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="paint.models.heads"):
        assert torch.equal(zeroshot_head(bundle, classes, templates, cache_dir=tmp_path), fresh)
    assert not caplog.records  # the rebuilt entry is sound again


def test_head_cache_entry_under_another_key_is_not_used(tiny_clip_dir, tmp_path, caplog):
    bundle = load_clip(str(tiny_clip_dir))
    templates = ["a photo of the {}."]
    zeroshot_head(bundle, ["cat", "dog"], templates, cache_dir=tmp_path)
    (first,) = (tmp_path / "heads").iterdir()
    other = tmp_path / "heads" / f"{head_cache_key(bundle, ['red', 'blue'], templates)}.safetensors"
    shutil.copy(first, other)  # a sound file, but the head of other classes
    with caplog.at_level(logging.WARNING, logger="paint.models.heads"):
        head = zeroshot_head(bundle, ["red", "blue"], templates, cache_dir=tmp_path)
    assert torch.equal(head, zeroshot_head(bundle, ["red", "blue"], templates))
    assert "another key" in caplog.text

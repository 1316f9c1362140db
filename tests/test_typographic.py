"""Typographic attacks: deterministic rendering, the label=/text= file convention, the metrics,
an attack that fools a tiny model which reads text, and the ``paint typographic`` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from paint.data.preprocess import ImageSpec, preprocess_split
from paint.data.task import ArraySplit
from paint.errors import PaintError
from paint.studies.attacks import (
    AttackedSplit,
    attack_metrics,
    attack_texts,
    attacked_filename,
    decode_name,
    encode_name,
    parse_attacked_filename,
    read_attacked_dir,
    typographic_task,
    write_attacked_dataset,
)
from paint.world.lettering import AttackStyle, render_text

NAMES = ("red", "blue", "green")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _grey_split(n: int = 12, seed: int = 0) -> ArraySplit:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(60, 120, size=(n, 32, 32, 3), dtype=np.uint8)
    return ArraySplit(imgs, np.arange(n) % len(NAMES), f"grey-{n}-{seed}")


def _pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_rendering_is_deterministic_by_seed_and_writes_a_wrong_class():
    base = _grey_split()
    a1 = AttackedSplit(base, NAMES, AttackStyle(), seed=3)
    a2 = AttackedSplit(base, NAMES, AttackStyle(), seed=3)
    b = AttackedSplit(base, NAMES, AttackStyle(position="random", colour="random"), seed=4)
    assert a1.identity == a2.identity != b.identity
    assert np.array_equal(a1.texts, a2.texts)
    assert np.all(a1.texts != a1.labels)  # the written word is always another class
    for i in range(len(base)):
        assert np.array_equal(_pixels(a1.image(i)), _pixels(a2.image(i)))
        assert not np.array_equal(_pixels(a1.image(i)), _pixels(base.image(i)))  # something was written
    assert any(not np.array_equal(_pixels(a1.image(i)), _pixels(b.image(i))) for i in range(len(base)))
    texts = attack_texts(np.zeros(200, dtype=int), 3, seed=0)
    assert set(texts.tolist()) == {1, 2}  # uniform over the other classes, never the label
    with pytest.raises(PaintError, match="needs at least two classes"):
        attack_texts(np.zeros(3, dtype=int), 1, seed=0)


def test_style_controls_size_colour_position_and_opacity():
    img = _grey_split(1).image(0)
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    base = _pixels(img)
    assert np.array_equal(_pixels(render_text(img, "blue", AttackStyle(opacity=0.0), rng())), base)

    red = _pixels(render_text(img, "blue", AttackStyle(colour=(255, 0, 0), jitter=0.0), rng()))
    changed = np.any(red != base, axis=-1)
    assert changed.sum() > 20 and red[changed][:, 0].mean() > red[changed][:, 2].mean() + 80

    def ink_rows(style: AttackStyle) -> np.ndarray:
        diff = np.any(_pixels(render_text(img, "blue", style, rng())) != base, axis=-1)
        return np.flatnonzero(diff.any(axis=1))

    top, bottom = (
        ink_rows(AttackStyle(position="top", jitter=0.0)),
        ink_rows(AttackStyle(position="bottom", jitter=0.0)),
    )
    assert top.mean() + 8 < bottom.mean()
    small, big = ink_rows(AttackStyle(font_size=0.15, jitter=0.0)), ink_rows(AttackStyle(font_size=0.4, jitter=0.0))
    assert len(big) > len(small)
    half = _pixels(render_text(img, "blue", AttackStyle(colour="white", opacity=0.5, jitter=0.0), rng()))
    full = _pixels(render_text(img, "blue", AttackStyle(colour="white", jitter=0.0), rng()))
    assert base.mean() < half.mean() < full.mean()
    with pytest.raises(Exception):
        AttackStyle(colour="not-a-colour")


def test_file_name_convention_round_trips(tmp_path):
    # The paper's released data: label=<true>_text=<written>.<ext>, no index.
    assert parse_attacked_filename("label=dog_text=cat.png") == ("dog", "cat", None)
    assert parse_attacked_filename("label=dog_text=cat_17.jpg") == ("dog", "cat", 17)
    for name in ("traffic light", "t_shirt", "a=b", "50% off"):
        assert decode_name(encode_name(name)) == name and "_" not in encode_name(name)
        label, text, idx = parse_attacked_filename(attacked_filename(name, "cat", 3))
        assert (label, text, idx) == (name, "cat", 3)
    with pytest.raises(PaintError, match="does not follow the typographic naming convention"):
        parse_attacked_filename("dog_cat.png")

    base = _grey_split(10)
    attacked = AttackedSplit(base, ("t_shirt", "traffic light", "dog"), AttackStyle(), seed=1)
    names = write_attacked_dataset(attacked, tmp_path / "typo", progress=False)
    assert len(set(names)) == len(names) == 10
    split, classnames = read_attacked_dir(tmp_path / "typo", attacked.classnames)
    assert classnames == attacked.classnames
    assert np.array_equal(split.labels, attacked.labels) and np.array_equal(split.texts, attacked.texts)
    assert np.array_equal(split.source_index, np.arange(10))
    for i in range(10):  # PNG is lossless: the files hold exactly the rendered pixels
        assert np.array_equal(_pixels(split.image(i)), _pixels(attacked.image(i)))
    # Without class names, the names come from the files (sorted union of label= and text=).
    _, inferred = read_attacked_dir(tmp_path / "typo")
    assert inferred == tuple(sorted(attacked.classnames))
    task = typographic_task(tmp_path / "typo", classnames=attacked.classnames)
    assert len(task.split("test")) == 10
    with pytest.raises(PaintError, match="dog|cat|class"):
        read_attacked_dir(tmp_path / "typo", ("dog", "cat"))  # names in the files that the task lacks


def test_attack_metrics_follow_their_definition():
    labels = np.array([0, 0, 1, 1])
    texts = np.array([1, 1, 0, 0])
    clean = torch.tensor([[5.0, 0], [5.0, 0], [0, 5.0], [5.0, 0]])  # 3 of 4 correct when clean
    attacked = torch.tensor([[0, 5.0], [5.0, 0], [5.0, 0], [5.0, 0]])  # predicted text on 0, 2, 3
    m = attack_metrics(clean, attacked, labels, texts)
    assert m["clean_accuracy"] == 0.75 and m["attacked_accuracy"] == 0.25
    assert m["attack_success_rate"] == pytest.approx(2 / 3)  # among the 3 clean-correct images
    assert m["text_rate"] == 0.75
    assert attack_metrics(None, attacked, labels, texts)["attack_success_rate"] == 0.75


# --------------------------------------------------------------------------- a model that reads text


def _tiny_vision_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=8,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=3,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    return CLIPModel(cfg).eval()


def _squares(n: int, seed: int, with_word: bool) -> tuple[np.ndarray, np.ndarray]:
    """A red (class 0) or blue (class 1) square on grey; optionally a class name written on it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    words = rng.integers(0, 2, n)
    for i in range(n):
        img = np.full((32, 32, 3), rng.integers(90, 140), dtype=np.uint8)
        x, y = rng.integers(4, 14, 2)
        img[y : y + 14, x : x + 14] = (220, 40, 40) if labels[i] == 0 else (40, 60, 220)
        pil = Image.fromarray(img)
        if with_word:
            pil = render_text(pil, ("red", "blue")[words[i]], AttackStyle(colour="white"), rng)
        out[i] = np.asarray(pil)
    # Images with a word are captioned by the word (as web captions name visible text).
    return out, (words if with_word else labels)


@pytest.fixture(scope="module")
def text_reading_model():
    """A tiny CLIP image tower trained (head frozen) on squares captioned by colour and on
    labelled squares captioned by their word: it learns that written words win."""
    from paint.train.finetune import FinetuneConfig, TrainingSet, finetune

    model = _tiny_vision_clip()
    spec = ImageSpec(32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    head = torch.nn.functional.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)), dim=-1) * 20.0
    xc, yc = _squares(120, 0, with_word=False)
    xw, yw = _squares(120, 1, with_word=True)
    x = torch.from_numpy(np.concatenate([xc, xw])).permute(0, 3, 1, 2).contiguous()
    y = np.concatenate([yc, yw])
    cfg = FinetuneConfig(epochs=6, lr=2e-3, batch_size=32, warmup_steps=5, weight_decay=0.0, seed=0)
    finetune(model, [TrainingSet("squares", x, y, head)], spec, cfg)
    return model, head, spec


def test_attack_lowers_the_accuracy_of_a_model_that_reads(text_reading_model):
    from paint.evaluation.results import predict

    model, head, spec = text_reading_model
    xs, ys = _squares(120, 2, with_word=False)
    clean = ArraySplit(xs, ys, "squares-test")
    attacked = AttackedSplit(clean, ("red", "blue"), AttackStyle(colour="white"), seed=5)
    lc = predict(model, head, preprocess_split(clean, spec), spec)
    la = predict(model, head, preprocess_split(attacked, spec), spec)
    m = attack_metrics(lc, la, clean.labels, attacked.texts)
    assert m["clean_accuracy"] >= 0.85, m
    assert m["attacked_accuracy"] <= m["clean_accuracy"] - 0.3, m
    assert m["attack_success_rate"] >= 0.5, m

    # PAINT's remedy in miniature: fine-tune a copy on attacked images with their TRUE labels,
    # interpolate, and the attack stops working on fresh attacked images while clean accuracy holds.
    import copy

    from paint.train.finetune import FinetuneConfig, TrainingSet, finetune
    from paint.weights.ops import interpolate, is_image_tower_key

    xt, yt = _squares(96, 3, with_word=False)
    train = AttackedSplit(ArraySplit(xt, yt, "squares-train"), ("red", "blue"), AttackStyle(colour="white"), seed=6)
    patched = copy.deepcopy(model)
    cfg = FinetuneConfig(epochs=4, lr=2e-3, batch_size=32, warmup_steps=2, weight_decay=0.0, seed=0)
    finetune(patched, [TrainingSet("attacked", preprocess_split(train, spec), yt, head)], spec, cfg)
    theta = interpolate(model.state_dict(), patched.state_dict(), 0.7, keys=is_image_tower_key)
    patched.load_state_dict(theta)
    lc2 = predict(patched, head, preprocess_split(clean, spec), spec)
    la2 = predict(patched, head, preprocess_split(attacked, spec), spec)
    m2 = attack_metrics(lc2, la2, clean.labels, attacked.texts)
    assert m2["attacked_accuracy"] >= m["attacked_accuracy"] + 0.3, (m, m2)
    assert m2["clean_accuracy"] >= m["clean_accuracy"] - 0.1, (m, m2)


# --------------------------------------------------------------------------- the commands


def test_typographic_render_and_eval_commands(tmp_path, tiny_clip_dir, capsys):
    from paint.cli import main

    out = tmp_path / "attacked"
    rc = main(
        [
            "typographic",
            "render",
            "--task",
            "shapes",
            "--split",
            "test",
            "--out",
            str(out),
            "--limit",
            "12",
            "--colour",
            "255,0,0",
            "--position",
            "top",
            "--font-size",
            "0.25",
            "--opacity",
            "0.8",
        ]
    )
    assert rc == 0
    files = sorted(p.name for p in out.glob("label=*.png"))
    assert len(files) == 12
    meta = json.loads((out / "attack.json").read_text())
    assert meta["style"]["colour"] == [255, 0, 0] and meta["style"]["position"] == "top"
    capsys.readouterr()
    rc = main(["typographic", "eval", "--data", str(out), "--model", str(tiny_clip_dir), "--task", "shapes", "--json"])
    assert rc == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n"] == 12 and 0.0 <= m["attacked_accuracy"] <= 1.0
    assert main(["typographic", "eval", "--data", str(tmp_path / "missing"), "--model", str(tiny_clip_dir)]) == 2


def test_typographic_run_writes_results_config_and_plots(tmp_path, tiny_clip_dir):
    from paint.cli import main

    cfg = {
        "model": str(tiny_clip_dir),
        "output_dir": str(tmp_path / "run"),
        "patch_task": "shapes",
        "transfer_tasks": ["colours"],
        "max_train": 48,
        "max_eval": 24,
        "selection": {"alphas": [0.0, 0.5, 1.0]},
        "finetune": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "warmup_steps": 1},
        "test_styles": {"serif": {"font": "DejaVuSerif.ttf"}, "low": {"position": "bottom", "jitter": 0.0}},
    }
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["typographic", "run", str(path), "--opacity", "0.9"]) == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "results.jsonl", "summary.json", "summary.md", "sweep.png"):
        assert (run / name).is_file(), name
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["attack"]["opacity"] == 0.9 and resolved["selection"]["alphas"] == [0.0, 0.5, 1.0]
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["test"]) == {"shapes", "colours"}
    assert summary["test"]["colours"]["role"] == "transfer"
    assert summary["selection"]["patching"] == ["shapes/attacked"]
    # Defaults: the mean clean accuracy is bounded (the grid raced, screened by its ends), and fine-tuning
    # sees each image clean and attacked.
    assert summary["selection"]["rule"] == "screened-race:grid/constrained-mean"
    assert summary["alpha"] == summary["selection"]["candidates"]["constrained-mean"]["alpha"]
    assert summary["finetune"]["steps"] == 2 * 48 // 16
    # Held-out attacked images never choose alpha; their clean images may guard clean accuracy.
    chosen_on = summary["selection"]["patching"] + summary["selection"]["support"]
    assert "colours/clean" in chosen_on and not any(n.startswith("colours/attacked") for n in chosen_on)
    for r in summary["test"].values():
        for label in ("zeroshot", "patched", "finetuned"):
            assert {"clean_accuracy", "attacked_accuracy", "attack_success_rate"} <= set(r[label])
    # Held-out lettering styles are measured for the patch and transfer tasks at every model.
    for r in summary["test"].values():
        for label in ("zeroshot", "patched", "finetuned"):
            assert set(r[label]["styles"]) == {"serif", "low"}
            assert 0.0 <= r[label]["styles"]["serif"]["attacked_accuracy"] <= 1.0
    assert summary["test_styles"]["serif"]["font"] == "DejaVuSerif.ttf"
    assert "Lettering styles never trained on" in (run / "summary.md").read_text()
    # The attacked test sets were written in the convention and read back with the right labels.
    split, _ = read_attacked_dir(run / "data" / "colours" / "test")
    assert len(split) == 24
    assert main(["typographic", "run", str(path)]) == 2  # finished run: refuses to overwrite


def test_default_held_out_styles_differ_from_the_training_style():
    from paint.studies.attacks import HELD_OUT_STYLES
    from paint.studies.typographic import TypographicConfig

    cfg = TypographicConfig(output_dir="x")
    assert set(cfg.test_styles) == set(HELD_OUT_STYLES) and len(HELD_OUT_STYLES) >= 4
    assert all(st != cfg.attack for st in cfg.test_styles.values())


def test_typographic_rule_flags_and_seeds(tmp_path, tiny_clip_dir):
    from paint.cli import main

    cfg = {
        "model": str(tiny_clip_dir),
        "output_dir": str(tmp_path / "run"),
        "patch_task": "shapes",
        "transfer_tasks": ["colours"],
        "max_train": 32,
        "max_eval": 16,
        "selection": {"alphas": [0.0, 1.0]},
        "finetune": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "warmup_steps": 1},
        "test_styles": {},
        "write_images": False,
        "seeds": [3, 4],
    }
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["typographic", "run", str(path), "--rule", "constrained", "--constraint", "each"]) == 0
    run = tmp_path / "run"
    for s in (3, 4):
        one = yaml.safe_load((run / f"seed-{s}" / "config.yaml").read_text())
        assert one["selection"]["constraint"] == "each" and one["seed"] == s and one["patch_task"]["split_seed"] == s
    summary = json.loads((run / "summary.json").read_text())
    per_seed = [json.loads((run / f"seed-{s}" / "summary.json").read_text()) for s in (3, 4)]
    cell = summary["test"]["colours"]["patched"]["attacked_accuracy"]
    values = [p["test"]["colours"]["patched"]["attacked_accuracy"] for p in per_seed]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(np.mean(values))
    assert summary["test"]["colours"]["role"] == "transfer"
    assert "| colours | transfer | patched |" in (run / "summary.md").read_text()

"""CLIP pretraining on the offline world, and the shipped default model (golden regression)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from paint.errors import PaintError
from paint.pretraining.build import PretrainConfig, build_clip
from paint.pretraining.run import CorpusBatches, clip_loss, pretrain, zero_shot

TINY_CLIP = {
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 32,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    },
    "projection_dim": 32,
}


def tiny_config(**kw) -> PretrainConfig:
    base = dict(
        clip=TINY_CLIP,
        batch_size=16,
        steps_per_epoch=10,
        epochs=2,
        warmup_steps=3,
        lr=2e-3,
        tokenizer_captions=300,
        eval_images=0,
        threads=1,
    )
    return PretrainConfig(**{**base, **kw})


def test_a_few_steps_lower_the_contrastive_loss_on_a_fixed_batch(tmp_path):
    cfg = tiny_config()
    final = pretrain(cfg, tmp_path / "run")
    assert final["steps"] == 20
    assert final["runtime"]["mixed_precision"] == "no" and final["runtime"]["device"] == "cpu"  # auto on a CPU
    from transformers import AutoTokenizer, CLIPModel

    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    batch = CorpusBatches(cfg, tok, epoch=0, max_len=32)[0]
    before = build_clip(cfg, tok).eval()  # the same seeded initialisation the run started from
    after = CLIPModel.from_pretrained(tmp_path / "run" / "model").eval()
    with torch.no_grad():
        l0, l1 = float(clip_loss(before, batch)), float(clip_loss(after, batch))
    assert l1 < l0 - 0.05, (l0, l1)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["batch_size"] == 16 and saved["clip"]["projection_dim"] == 32

    # Shipping writes the model with its build record (golden values the regression test reads).
    from paint.pretraining.ship import ship

    record = ship(tmp_path / "run", tmp_path / "shipped", "paint pretrain tiny.yaml", golden_limit=10, test_limit=10)
    shipped = json.loads((tmp_path / "shipped" / "BUILD.json").read_text())
    assert shipped["steps"] == 20 and shipped["corpus"]["pairs_seen"] == 320 and shipped["finished"]
    assert set(shipped["golden"]["accuracy"]) == {"shapes", "colours", "rendered-digits", "backgrounds"}
    assert "digits" in record["zero_shot_test"] and shipped["machine"]["cpu_count"] >= 1
    assert CLIPModel.from_pretrained(tmp_path / "shipped").config.projection_dim == 32

    # Resuming a finished run with the same config trains nothing more; another config is refused.
    again = pretrain(cfg, tmp_path / "run", resume=True)
    assert again["steps"] == 20 and again["resumed_from_epoch"] == 1
    with pytest.raises(PaintError, match="--resume"):
        pretrain(cfg, tmp_path / "run")
    with pytest.raises(PaintError, match="different config"):
        pretrain(tiny_config(lr=1e-3), tmp_path / "run", resume=True)


def test_clip_loss_is_symmetric_infonce():
    cfg = tiny_config()
    from paint.world.tokenizer import train_tokenizer

    tok = train_tokenizer(["a red star", "two circles", "the digit one"])
    model = build_clip(cfg, tok).eval()
    assert model.config.text_config.eos_token_id == tok.eos_token_id != 2
    enc = tok(["a red star", "two circles", "the digit one"], padding=True, return_tensors="pt")
    batch = {"pixel_values": torch.randn(3, 3, 32, 32), **enc}
    with torch.no_grad():
        out = model(**batch)
        ours = clip_loss(model, batch)
    target = torch.arange(3)
    ref = 0.5 * (
        torch.nn.functional.cross_entropy(out.logits_per_image, target)
        + torch.nn.functional.cross_entropy(out.logits_per_text, target)
    )
    assert torch.allclose(ours, ref, atol=1e-5)


def test_cli_pretrain_writes_a_standard_hf_checkpoint(tmp_path):
    from paint.cli import main

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(steps_per_epoch=2, epochs=1).model_dump(mode="json")))
    assert main(["pretrain", str(cfg_path), "--out", str(tmp_path / "run"), "--max-steps", "1"]) == 0
    model_dir = tmp_path / "run" / "model"
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(model_dir)
    assert model.config.text_config.eos_token_id == AutoTokenizer.from_pretrained(model_dir).eos_token_id
    assert AutoImageProcessor.from_pretrained(model_dir).crop_size["height"] == 32
    assert AutoProcessor.from_pretrained(model_dir).tokenizer is not None
    assert main(["pretrain", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x")]) == 2


# ------------------------------------------------------------------ the shipped default model

ASSET = Path(__file__).resolve().parents[1] / "src" / "paint" / "assets" / "default-model"
needs_asset = pytest.mark.skipif(not (ASSET / "BUILD.json").is_file(), reason="default model not built yet")


@needs_asset
def test_shipped_model_loads_through_transformers_and_the_pipeline():
    from transformers import AutoTokenizer, CLIPModel, pipeline

    from paint.world.tasks import world_task

    assert sum(f.stat().st_size for f in ASSET.iterdir()) < 20 * 2**20
    model = CLIPModel.from_pretrained(ASSET)
    tok = AutoTokenizer.from_pretrained(ASSET)
    assert model.config.text_config.eos_token_id == tok.eos_token_id != 2
    task = world_task("colours")
    split = task.split("test")
    pipe = pipeline("zero-shot-image-classification", model=str(ASSET))
    preds = [
        pipe(split.image(i), candidate_labels=list(task.classnames), hypothesis_template=task.templates[0])[0]["label"]
        for i in range(8)
    ]
    assert np.mean([p == task.classnames[y] for p, y in zip(preds, split.labels[:8])]) >= 0.5


@needs_asset
def test_shipped_model_reproduces_its_recorded_zero_shot_accuracies():
    from paint.models.clip import load_clip

    build = json.loads((ASSET / "BUILD.json").read_text())
    golden = build["golden"]
    bundle = load_clip(str(ASSET))
    got = zero_shot(
        bundle.model,
        bundle.tokenizer,
        bundle.processor,
        list(golden["accuracy"]),
        split=golden["split"],
        limit=golden["limit"],
    )
    for task, expected in golden["accuracy"].items():
        assert abs(got[task] - expected) <= 0.5, (task, got[task], expected)
    support = build["zero_shot_test"]
    assert min(support[t] for t in ("shapes", "colours", "rendered-digits", "backgrounds")) >= 70


@needs_asset
def test_shipped_model_is_susceptible_to_typographic_attacks():
    # Issue 7: the default model must fall for a written class name as CLIP does (it answers with
    # the word), not merely lose the object under it. Measured on the first 200 test images:
    # shapes 52.5% attack success (clean 81.0, attacked 15.5), colours 74.5%; chance is 11-14%,
    # and world-v2, which was not susceptible, scored about 10%.
    from paint.data.preprocess import preprocess_split
    from paint.data.task import SubsetSplit
    from paint.evaluation.results import predict
    from paint.models.clip import load_clip
    from paint.models.heads import build_head
    from paint.studies.attacks import AttackedSplit, attack_metrics
    from paint.world.lettering import AttackStyle
    from paint.world.tasks import world_task

    bundle = load_clip(str(ASSET))
    for name, floor in (("shapes", 0.40), ("colours", 0.60)):
        task = world_task(name)
        clean = SubsetSplit(task.split("test"), np.arange(200), "first200")
        attacked = AttackedSplit(clean, task.classnames, AttackStyle(), 0)
        head = build_head(bundle, task.classnames, task.templates)
        logits = [predict(bundle.model, head, preprocess_split(s, bundle.spec), bundle.spec) for s in (clean, attacked)]
        m = attack_metrics(logits[0], logits[1], clean.labels, attacked.texts)
        assert m["attack_success_rate"] >= floor, (name, m)
        assert m["attacked_accuracy"] <= 0.5 * m["clean_accuracy"], (name, m)


# ------------------------------------------------------------------ the model ladder (paint:tiny, default, medium)

ASSETS = Path(__file__).resolve().parents[1] / "src" / "paint" / "assets"
LADDER = {"paint:tiny": "tiny-model", "paint:default": "default-model", "paint:medium": "medium-model"}
needs_ladder = pytest.mark.skipif(
    not all((ASSETS / d / "BUILD.json").is_file() for d in LADDER.values()), reason="the ladder is not built yet"
)
# What must be the same for every rung: one recipe, one data budget (only the architecture changes).
RECIPE_FIELDS = ("seed", "batch_size", "steps_per_epoch", "epochs", "lr", "weight_decay", "warmup_steps", "grad_clip")


@needs_ladder
def test_the_ladder_is_one_recipe_spanning_15x_in_parameters_under_30_mb():
    from safetensors import safe_open

    builds = {name: json.loads((ASSETS / d / "BUILD.json").read_text()) for name, d in LADDER.items()}
    params = {}
    for name, d in LADDER.items():
        with safe_open(str(ASSETS / d / "model.safetensors"), "pt") as f:
            params[name] = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    sizes = list(params.values())
    assert sizes == sorted(sizes) and sizes[-1] >= 15 * sizes[0], params
    recipes = [{k: b["config"][k] for k in RECIPE_FIELDS} for b in builds.values()]
    assert all(r == recipes[0] for r in recipes), recipes
    assert {b["corpus"]["generator_version"] for b in builds.values()} == {"world-v3c"}
    assert {b["corpus"]["pairs_seen"] for b in builds.values()} == {576000}
    assert all(b["finished"] for b in builds.values())
    added = sum(f.stat().st_size for d in ("tiny-model", "medium-model") for f in (ASSETS / d).iterdir())
    assert added < 30 * 2**20


@needs_ladder
@pytest.mark.parametrize("name", ["paint:tiny", "paint:medium"])
def test_each_rung_reproduces_its_recorded_zero_shot_accuracies(name):
    from paint.models.clip import load_clip

    build = json.loads((ASSETS / LADDER[name] / "BUILD.json").read_text())
    golden = build["golden"]
    bundle = load_clip(name)  # by its shipped name, as every command takes it
    got = zero_shot(
        bundle.model, bundle.tokenizer, bundle.processor, list(golden["accuracy"]), golden["split"], golden["limit"]
    )
    for task, expected in golden["accuracy"].items():
        assert abs(got[task] - expected) <= 0.5, (name, task, got[task], expected)
    assert build["command"].startswith(f"paint pretrain configs/pretrain-{name.split(':')[1]}.yaml")

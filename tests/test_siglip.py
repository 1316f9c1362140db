"""SigLIP through the model-family registry: load, heads (pipeline parity), frozen text side, CLI, pretraining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from paint.errors import PaintError
from paint.models.clip import load_clip, save_clip
from paint.models.families import CLIP, FAMILIES, SIGLIP, family_for_model_type, family_of
from paint.models.heads import zeroshot_head
from tests.conftest import make_tokenizer

TEXT_LEN = 64  # transformers' zero-shot pipeline pads SigLIP texts to 64 tokens


def make_tiny_siglip(out: Path, seed: int = 0, hidden: int = 32, image_size: int = 16, layers: int = 2) -> Path:
    """Write a random SiglipModel checkpoint (model, tokenizer, PIL image processor) to ``out``."""
    from transformers import SiglipConfig, SiglipModel

    from paint.models.siglip import image_processor_class, init_logit_parameters

    tok = make_tokenizer(max_length=TEXT_LEN)
    torch.manual_seed(seed)
    cfg = SiglipConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            max_position_embeddings=TEXT_LEN,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=4,
        ),
    )
    model = SiglipModel(cfg).eval()
    init_logit_parameters(model)
    with torch.no_grad():  # a bias away from the paper's -10 so that a lost bias would show in probabilities
        model.logit_bias.fill_(-1.5 - seed)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    image_processor_class()(size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    return make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip") / "model")


@pytest.fixture(scope="module")
def tiny_siglip_dir_b(tmp_path_factory) -> Path:
    return make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip-b") / "model", seed=1)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    """Images of several shapes, none square: SigLIP squashes them where CLIP would crop."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (20 + 3 * i, 31 - 2 * i, 3), dtype=np.uint8)) for i in range(n)]


# ------------------------------------------------------------------ the registry


def test_registry_has_one_adapter_per_family_with_its_paper_and_tower():
    assert set(FAMILIES) == {"clip", "siglip"}
    assert family_for_model_type("clip") is CLIP and family_for_model_type("siglip") is SIGLIP
    assert "2303.15343" in SIGLIP.paper and "2103.00020" in CLIP.paper
    assert SIGLIP.is_image_tower_key("vision_model.head.probe")
    assert not SIGLIP.is_image_tower_key("visual_projection.weight")  # not a SigLIP tensor: never claimed
    for key in ("text_model.head.weight", "logit_scale", "logit_bias"):
        assert not SIGLIP.is_image_tower_key(key) and not CLIP.is_image_tower_key(key)
    assert CLIP.is_image_tower_key("visual_projection.weight")


def test_unsupported_model_type_is_one_line_naming_the_supported_ones(tmp_path):
    with pytest.raises(PaintError, match=r"'siglip2' model \(SigLIP 2's variable-resolution.*clip, siglip"):
        family_for_model_type("siglip2", "x")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "blip"}))
    (tmp_path / "m" / "tokenizer.json").write_text("{}")
    with pytest.raises(PaintError, match=r"is a 'blip' model; paint reads the model types: clip, siglip"):
        load_clip(str(tmp_path / "m"))


# ------------------------------------------------------------------ loading, saving, heads


def test_loading_a_siglip_checkpoint_gives_its_family_tower_and_spec(tiny_siglip_dir):
    from transformers import SiglipModel

    bundle = load_clip(str(tiny_siglip_dir))
    assert isinstance(bundle.model, SiglipModel) and bundle.family is SIGLIP
    tower = bundle.image_tower_state()
    assert tower and all(k.startswith("vision_model.") for k in tower)
    assert any(k.startswith("vision_model.head.") for k in tower)  # the attention-pooling head is the tower's
    rest = set(bundle.model.state_dict()) - set(tower)
    assert {"logit_scale", "logit_bias"} <= rest and all(k.startswith("text_model.") or "logit" in k for k in rest)
    assert (bundle.spec.resize, bundle.spec.crop) == (16, 16)


def test_save_load_round_trip_is_exact(tiny_siglip_dir, tmp_path):
    from transformers import SiglipModel

    bundle = load_clip(str(tiny_siglip_dir))
    again = load_clip(str(save_clip(bundle, tmp_path / "copy")))
    a, b = bundle.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.family is SIGLIP and again.spec == bundle.spec
    assert again.tokenizer.get_vocab() == bundle.tokenizer.get_vocab()
    assert again.text_identity == bundle.text_identity
    SiglipModel.from_pretrained(tmp_path / "copy")  # loads with plain transformers


def test_head_matches_zero_shot_pipeline_probabilities(tiny_siglip_dir):
    """One template: our head + the family's logits and sigmoid give the pipeline's scores."""
    from transformers import pipeline

    from paint.data.preprocess import normalize, spec_transform
    from paint.evaluation.results import logits_for

    bundle = load_clip(str(tiny_siglip_dir))
    classes = ["cat", "dog", "circle", "square"]
    template = "a photo of the {}."
    images = _images(4)
    pipe = pipeline(
        "zero-shot-image-classification",
        model=bundle.model,
        tokenizer=bundle.tokenizer,
        image_processor=bundle.processor,
        device="cpu",
    )
    head = zeroshot_head(bundle, classes, [template])
    assert bundle.spec.squash  # SigLIP's processor resizes to a square, no centre crop
    pixels = torch.stack([torch.from_numpy(spec_transform(im, bundle.spec)) for im in images])
    with torch.inference_mode():
        logits = logits_for(bundle.model, head, normalize(pixels, bundle.spec.mean, bundle.spec.std))
    probs = SIGLIP.probabilities(logits)
    assert not torch.allclose(probs.sum(-1), torch.ones(4))  # independent sigmoids, not a softmax
    for img, p in zip(images, probs):
        out = pipe(img, candidate_labels=classes, hypothesis_template=template)
        ref = {d["label"]: d["score"] for d in out}
        ours = {c: float(p[i]) for i, c in enumerate(classes)}
        assert max(ref, key=ref.get) == max(ours, key=ours.get)
        for c in classes:
            assert abs(ref[c] - ours[c]) < 1e-5, (c, ref[c], ours[c])


def test_head_averages_normalised_template_embeddings_and_logits_add_the_bias(tiny_siglip_dir):
    import torch.nn.functional as F

    bundle = load_clip(str(tiny_siglip_dir))
    model, templates = bundle.model, ["a photo of the {}.", "this is {}."]
    head = zeroshot_head(bundle, ["cat", "dog"], templates)
    enc = SIGLIP.tokenize(bundle.tokenizer, [t.format(c) for c in ("cat", "dog") for t in templates], TEXT_LEN)
    assert enc["input_ids"].shape == (4, TEXT_LEN)  # padded to the maximum: SigLIP pools the last position
    with torch.no_grad():
        emb = F.normalize(SIGLIP.text_features(model, **enc), dim=-1).view(2, 2, -1)
    expected = F.normalize(emb.mean(1), dim=-1) * model.logit_scale.exp()
    torch.testing.assert_close(head, expected)
    feats = F.normalize(torch.randn(3, head.shape[1]), dim=-1)
    torch.testing.assert_close(SIGLIP.logits(model, feats, head), feats @ head.t() + model.logit_bias.detach())
    torch.testing.assert_close(CLIP.logits(model, feats, head), feats @ head.t())  # the bias is SigLIP's alone


def test_siglip_and_clip_heads_never_share_a_cache_entry(tiny_siglip_dir, tiny_clip_dir, tmp_path):
    from paint.models.heads import head_cache_key

    s, c = load_clip(str(tiny_siglip_dir)), load_clip(str(tiny_clip_dir))
    assert head_cache_key(s, ["cat"], ["{}"]) != head_cache_key(c, ["cat"], ["{}"])
    before = zeroshot_head(s, ["cat", "dog"], ["{}"], cache_dir=tmp_path)
    torch.testing.assert_close(zeroshot_head(s, ["cat", "dog"], ["{}"], cache_dir=tmp_path), before)


# ------------------------------------------------------------------ patching: frozen text side, interpolation


def test_finetune_trains_only_the_image_tower_text_scale_and_bias_bit_identical(tiny_siglip_dir):
    from paint.evaluation.results import evaluate_split
    from paint.train.finetune import FinetuneConfig, TrainingSet, finetune

    bundle = load_clip(str(tiny_siglip_dir))
    head = zeroshot_head(bundle, ["red", "green", "blue"], ["a photo of the {}."])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 96)
    base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.float32)
    images = torch.from_numpy((base[labels][:, :, None, None] + rng.normal(0, 25, (96, 3, 16, 16))).clip(0, 255))
    images = images.to(torch.uint8)
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    acc0 = evaluate_split(bundle.model, head, images, labels, bundle.spec)["accuracy"]
    cfg = FinetuneConfig(epochs=3, lr=3e-3, batch_size=32, warmup_steps=2, weight_decay=0.0, seed=0)
    finetune(bundle.model, [TrainingSet("colours", images, labels, head)], bundle.spec, cfg)
    after = bundle.model.state_dict()
    acc1 = evaluate_split(bundle.model, head, images, labels, bundle.spec)["accuracy"]
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.startswith("vision_model.") for k in changed)
    assert any(k.startswith("vision_model.head.") for k in changed)
    frozen = [k for k in before if not SIGLIP.is_image_tower_key(k)]
    assert "logit_scale" in frozen and "logit_bias" in frozen
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert acc1 > acc0 + 0.2, (acc0, acc1)


def test_interpolation_endpoints_and_text_side(tiny_siglip_dir, tiny_siglip_dir_b, tmp_path):
    from paint.cli import main

    mids = {}
    for alpha in (0.0, 1.0, 0.25):
        out = tmp_path / f"a{alpha}"
        argv = ["interpolate", "--zeroshot", str(tiny_siglip_dir), "--finetuned", str(tiny_siglip_dir_b)]
        assert main([*argv, "--alpha", str(alpha), "--out", str(out)]) == 0
        mids[alpha] = load_clip(str(out)).model.state_dict()
    zs, ft = (load_clip(str(p)).model.state_dict() for p in (tiny_siglip_dir, tiny_siglip_dir_b))
    for k in zs:
        tower = SIGLIP.is_image_tower_key(k)
        assert torch.equal(mids[0.0][k], zs[k]), k  # alpha=0 is theta_zs exactly
        assert torch.equal(mids[1.0][k], ft[k] if tower else zs[k]), k  # alpha=1: the other tower, our text
        if not tower:  # text tower, logit scale and bias: the zero-shot model's at every alpha
            assert torch.equal(mids[0.25][k], zs[k]), k
    k = "vision_model.head.mlp.fc1.weight"
    torch.testing.assert_close(mids[0.25][k], 0.75 * zs[k] + 0.25 * ft[k])
    assert not torch.equal(zs["logit_bias"], ft["logit_bias"])  # the check above could have failed


# ------------------------------------------------------------------ the CLI end to end


def test_cli_eval_on_a_siglip_checkpoint(tiny_siglip_dir, tmp_path, capsys):
    from paint.cli import main
    from tests.test_cli import _folder

    pets = _folder(tmp_path / "pets", {"cat": 15, "dog": 15})
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_siglip_dir), "--task", str(pets), "--split", "train", "--limit", "10"]
    assert main([*argv, "--template", "a photo of the {}.", "--out", str(out), "--threads", "1"]) == 0
    r = json.loads((out / "eval.json").read_text())["results"]["pets"]
    assert r["n"] == 10 and set(r["per_class"]) == {"cat", "dog"} and 0.0 <= r["top1"] <= 1.0
    assert "| pets |" in capsys.readouterr().out


def test_cli_patch_end_to_end_on_a_siglip_checkpoint(tiny_siglip_dir, tmp_path):
    from transformers import SiglipModel

    from paint.cli import main

    cfg = {
        "model": str(tiny_siglip_dir),
        "output_dir": str(tmp_path / "run"),
        "patch_tasks": ["digits"],
        "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 64, "warmup_steps": 2, "max_steps": 4},
        "selection": {"alphas": [0.0, 0.5, 1.0]},
        "eval_batch_size": 512,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["patch", str(tmp_path / "config.yaml")]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert [p["alpha"] for p in summary["sweep"]] == [0.0, 0.5, 1.0]
    assert all(0.0 <= summary["test"]["digits"][k] <= 1.0 for k in ("zeroshot", "finetuned", "patched"))
    patched = SiglipModel.from_pretrained(run / "model").state_dict()
    zs = SiglipModel.from_pretrained(tiny_siglip_dir).state_dict()
    assert all(torch.equal(patched[k], zs[k]) for k in zs if not SIGLIP.is_image_tower_key(k))
    if summary["alpha"] > 0:
        assert any(not torch.equal(patched[k], zs[k]) for k in zs if SIGLIP.is_image_tower_key(k))


def test_cli_greedy_soup_of_siglip_towers_keeps_the_text_side(tiny_siglip_dir, tmp_path):
    """paint merge scores each soup with SigLIP's heads; the image towers are averaged, the rest is the base's."""
    from transformers import SiglipModel

    from paint.cli import main

    for i in (1, 2):
        model = SiglipModel.from_pretrained(tiny_siglip_dir)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if SIGLIP.is_image_tower_key(name):
                    p.add_(0.02 * i * torch.randn_like(p))
        model.save_pretrained(tmp_path / f"ft{i}")
    cfg = {
        "base": str(tiny_siglip_dir),
        "models": [{"path": str(tmp_path / "ft1")}, {"path": str(tmp_path / "ft2")}],
        "method": "greedy_soup",
        "output": str(tmp_path / "soup"),
        "evaluate_on": {"name": "digits"},
    }
    (tmp_path / "soup.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(tmp_path / "soup.yaml"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "soup" / "merge_summary.json").read_text())
    assert 0.0 <= summary["evaluation"]["val_accuracy"] <= 1.0
    soup = load_clip(str(tmp_path / "soup"))
    assert soup.family is SIGLIP
    base = SiglipModel.from_pretrained(tiny_siglip_dir).state_dict()
    merged = soup.model.state_dict()
    assert all(torch.equal(merged[k], base[k]) for k in base if not SIGLIP.is_image_tower_key(k))


# ------------------------------------------------------------------ sigmoid-loss pretraining


def test_sigmoid_loss_matches_transformers_siglip_loss(tiny_siglip_dir):
    from paint.models.siglip import sigmoid_loss

    model = load_clip(str(tiny_siglip_dir)).model
    ids = torch.randint(0, 30, (5, TEXT_LEN))
    px = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=px, return_loss=True).loss
        ours = sigmoid_loss(
            family_of(model).image_features(model, px),
            family_of(model).text_features(model, ids),
            model.logit_scale,
            model.logit_bias,
        )
    torch.testing.assert_close(ours, ref)
    # Every pair is its own binary problem. Orthogonal embeddings: positives at cos 1, negatives at 0.
    img, txt = torch.eye(3), torch.eye(3)
    base = float(sigmoid_loss(img, txt, torch.tensor(0.0), torch.tensor(0.0)))
    # A higher temperature raises the positives' logits only: lower loss.
    assert float(sigmoid_loss(img, txt, torch.tensor(1.0), torch.tensor(0.0))) < base
    # A negative bias costs each positive what it saves each negative, and there are twice as many negatives.
    assert float(sigmoid_loss(img, txt, torch.tensor(0.0), torch.tensor(-1.0))) < base
    assert float(sigmoid_loss(img, txt, torch.tensor(0.0), torch.tensor(1.0))) > base


def test_pretrain_a_tiny_siglip_lowers_the_sigmoid_loss_and_ships(tmp_path):
    from transformers import AutoTokenizer, SiglipModel

    from paint.pretraining.build import PretrainConfig, build_clip
    from paint.pretraining.run import CorpusBatches, pretrain, siglip_loss
    from paint.pretraining.ship import ship

    arch = {
        "text_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        "vision_config": dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32
        ),
    }
    arch["text_config"]["max_position_embeddings"] = 24
    arch["vision_config"]["patch_size"] = 8
    cfg = PretrainConfig(
        family="siglip",
        clip=arch,
        batch_size=16,
        steps_per_epoch=8,
        epochs=2,
        warmup_steps=2,
        lr=3e-3,
        tokenizer_captions=300,
        eval_images=0,
        threads=1,
    )
    final = pretrain(cfg, tmp_path / "run")
    assert final["steps"] == 16
    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    batch = CorpusBatches(cfg, tok, epoch=0, max_len=24)[0]
    assert batch["input_ids"].shape == (16, 24)  # padded to the maximum for last-position pooling
    before = build_clip(cfg, tok).eval()
    assert isinstance(before, SiglipModel)
    assert (
        float(before.logit_scale.detach().exp()) == pytest.approx(10.0) and float(before.logit_bias.detach()) == -10.0
    )
    after = SiglipModel.from_pretrained(tmp_path / "run" / "model").eval()
    with torch.no_grad():
        l0, l1 = float(siglip_loss(before, batch)), float(siglip_loss(after, batch))
    assert l1 < l0 - 0.05, (l0, l1)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "logit_bias" in log[-1]
    record = ship(tmp_path / "run", tmp_path / "shipped", "paint pretrain s.yaml", golden_limit=5, test_limit=5)
    assert record["config"]["family"] == "siglip" and load_clip(str(tmp_path / "shipped")).family is SIGLIP


def test_demo_takes_the_model_to_patch(monkeypatch, tmp_path):
    from paint.cli import main
    from paint.commands import demo as demo_command
    from paint.studies import demo

    seen = {}

    def fake_run_demo(output_dir, quick=False, resume=False, model="?"):
        seen["model"] = model
        raise PaintError("stop here")

    monkeypatch.setattr(demo_command, "run_demo", fake_run_demo)  # the command's own reference to the study
    assert main(["demo", "--quick", "--output-dir", str(tmp_path / "d"), "--model", "paint:siglip"]) == 2
    assert seen["model"] == "paint:siglip"
    assert demo.demo_config(tmp_path, quick=True, model="paint:siglip").model == "paint:siglip"


# ------------------------------------------------------------------ the shipped SigLIP (paint:siglip)

ASSET = Path(__file__).resolve().parents[1] / "src" / "paint" / "assets" / "default-siglip"
needs_asset = pytest.mark.skipif(not (ASSET / "BUILD.json").is_file(), reason="shipped SigLIP not built yet")


@needs_asset
def test_shipped_siglip_is_small_and_loads_as_paint_siglip():
    from transformers import SiglipModel

    assert sum(f.stat().st_size for f in ASSET.iterdir()) < 6 * 2**20
    bundle = load_clip("paint:siglip")
    assert bundle.family is SIGLIP and Path(bundle.source) == ASSET
    SiglipModel.from_pretrained(ASSET)  # plain transformers reads it
    build = json.loads((ASSET / "BUILD.json").read_text())
    assert build["config"]["family"] == "siglip" and build["config_file"] == "configs/pretrain-siglip.yaml"


@needs_asset
def test_shipped_siglip_reproduces_its_recorded_zero_shot_accuracies():
    from paint.pretraining.run import zero_shot

    build = json.loads((ASSET / "BUILD.json").read_text())
    golden = build["golden"]
    bundle = load_clip(str(ASSET))
    got = zero_shot(
        bundle.model, bundle.tokenizer, bundle.processor, list(golden["accuracy"]), golden["split"], golden["limit"]
    )
    for task, expected in golden["accuracy"].items():
        assert abs(got[task] - expected) <= 0.5, (task, got[task], expected)

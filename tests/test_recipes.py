"""Fine-tuning recipes: each ends in an image-tower delta; the properties the issue names, on a tiny CLIP."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from paint.errors import PaintError
from paint.evaluation.results import evaluate_split
from paint.models.clip import load_clip
from paint.models.heads import zeroshot_head
from paint.train.finetune import FinetuneConfig, TrainingSet, finetune
from paint.types import is_image_tower_key


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


BASE = dict(epochs=2, lr=3e-3, batch_size=32, warmup_steps=0, weight_decay=0.0, max_steps=4, seed=0, cpu=True)


def _colours(n: int, size: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.float32)
    imgs = base[labels][:, :, None, None] + rng.normal(0, 25, (n, 3, size, size))
    return torch.from_numpy(imgs.clip(0, 255).astype(np.uint8)), labels


def _setup(tiny_clip_dir):
    bundle = load_clip(str(tiny_clip_dir))
    head = zeroshot_head(bundle, ["red", "green", "blue"], ["a photo of the {}."])
    x, y = _colours(96, bundle.spec.crop, 0)
    return bundle, [TrainingSet("colours", x, y, head)]


def _tower(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if is_image_tower_key(k)}


def _drift(a, b) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{**BASE, **kw})


def test_default_recipe_is_frozen_head_and_a_name_is_short_for_a_mapping():
    assert FinetuneConfig().recipe.name == "frozen-head"
    cfg = FinetuneConfig.model_validate({"recipe": "lora"})
    assert cfg.recipe.name == "lora" and cfg.recipe.rank == 8
    soup = FinetuneConfig.model_validate({"recipe": {"name": "soup", "base": "l2-sp", "lrs": [1e-4, 1e-3]}})
    assert soup.recipe.base.name == "l2-sp" and soup.recipe.ingredients() == [{"lr": 1e-4}, {"lr": 1e-3}]


def _l2_distance(a, b) -> float:
    return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a) ** 0.5


def test_l2sp_with_a_huge_lambda_stays_at_theta_zs(tiny_clip_dir):
    lr, long = 1e-3, dict(epochs=4, max_steps=12)
    bundle, sets = _setup(tiny_clip_dir)
    zs = _tower(bundle.model)
    finetune(bundle.model, sets, bundle.spec, _cfg(lr=lr, **long))
    free = _tower(bundle.model)

    bundle2, sets2 = _setup(tiny_clip_dir)
    res = finetune(bundle2.model, sets2, bundle2.spec, _cfg(lr=lr, recipe={"name": "l2-sp", "strength": 1e6}, **long))
    pinned = _tower(bundle2.model)
    assert res.recipe == "l2-sp" and res.steps == 12
    # Frozen-head drifts step after step; the pull holds theta within one Adam step (lr) of theta_zs
    # (Adam normalises the update, so a coupled penalty cannot hold it closer than its step size).
    assert _drift(pinned, zs) < lr < _drift(free, zs)
    assert _l2_distance(pinned, zs) < 0.05 * _l2_distance(free, zs)

    bundle3, sets3 = _setup(tiny_clip_dir)
    finetune(bundle3.model, sets3, bundle3.spec, _cfg(lr=lr, recipe={"name": "l2-sp", "strength": 0.0}, **long))
    assert _drift(_tower(bundle3.model), free) == 0.0  # lambda 0 is frozen-head exactly


def test_lpft_probe_beats_the_zero_shot_head_on_a_separable_task():
    from paint.train.recipes.lpft import fit_probe

    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    labels = torch.arange(200) % 4
    feats = F.normalize(centres[labels] + 0.05 * torch.randn(200, 8, generator=g), dim=-1)  # (N, D), separable
    head0 = centres.roll(1, dims=0) * 10.0  # a "zero-shot" head with every class name on the wrong cluster

    def acc(head):
        return float(((feats @ head.t()).argmax(1) == labels).float().mean())

    head = fit_probe(feats, labels.numpy(), head0, steps=50)
    assert acc(head0) < 0.1 and acc(head) == 1.0, (acc(head0), acc(head))
    with pytest.raises(PaintError, match="labels span 0..3 but the head has 2 classes"):
        fit_probe(feats, labels.numpy(), head0[:2])


def test_lpft_returns_learned_heads_and_trains_against_them(tiny_clip_dir, tmp_path):
    from safetensors.torch import load_file

    bundle, sets = _setup(tiny_clip_dir)
    res = finetune(bundle.model, sets, bundle.spec, _cfg(recipe="lp-ft"), out_dir=tmp_path, fingerprint="x")
    assert set(res.heads) == {"colours"} and res.heads["colours"].shape == sets[0].head.shape
    assert not torch.equal(res.heads["colours"], sets[0].head)
    saved = load_file(str(tmp_path / "probe-heads.safetensors"))
    assert torch.equal(saved["colours"], res.heads["colours"])
    x, y = sets[0].images, sets[0].labels
    assert evaluate_split(bundle.model, res.heads["colours"], x, y, bundle.spec)["accuracy"] >= 0.9


def test_lora_delta_equals_peft_merged_model_and_alpha_zero_is_theta_zs(tiny_clip_dir):
    from peft import LoraConfig, get_peft_model

    from paint.train.recipes.config import LoraRecipe
    from paint.train.recipes.lora import inject_lora, merged_deltas, remove_lora

    bundle, sets = _setup(tiny_clip_dir)
    zs = _tower(bundle.model)
    plain = copy.deepcopy(bundle.model)
    spec = LoraRecipe(rank=2, lora_alpha=4.0)
    targets = inject_lora(bundle.model, spec, seed=0)
    assert targets and all(t.startswith("vision_model.") for t in targets)
    with torch.no_grad():  # B starts at zero: give it values so the delta is not trivially zero
        for n, p in bundle.model.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn_like(p))
    ours = merged_deltas(bundle.model, targets)
    lora_state = {k: v for k, v in bundle.model.state_dict().items() if ".lora_" in k}
    remove_lora(bundle.model, targets)
    assert _drift(_tower(bundle.model), zs) == 0.0  # removing the adapters leaves theta_zs

    peft_model = get_peft_model(plain, LoraConfig(r=2, lora_alpha=4.0, target_modules=targets))
    missing = peft_model.base_model.model.load_state_dict(lora_state, strict=False)
    assert not missing.unexpected_keys
    merged = peft_model.merge_and_unload().state_dict()
    for key, delta in ours.items():
        assert delta.abs().max() > 0
        torch.testing.assert_close(delta, merged[key] - zs[key], rtol=1e-5, atol=1e-6)
    untouched = [k for k in zs if k not in ours]
    assert untouched and all(torch.equal(merged[k], zs[k]) for k in untouched)


def test_lora_recipe_trains_adapters_only_and_leaves_a_plain_tower(tiny_clip_dir, tmp_path):
    from paint.pipeline.pool import Line

    bundle, sets = _setup(tiny_clip_dir)
    zs = _tower(bundle.model)
    n_tower = sum(v.numel() for v in zs.values())
    res = finetune(bundle.model, sets, bundle.spec, _cfg(recipe={"name": "lora", "rank": 2}), out_dir=tmp_path)
    theta_ft = _tower(bundle.model)
    assert set(theta_ft) == set(zs) and not any(".lora_" in n for n, _ in bundle.model.named_parameters())
    assert 0 < res.trainable_params < n_tower / 2
    changed = {k for k in zs if not torch.equal(zs[k], theta_ft[k])}
    assert changed and all(k.endswith("_proj.weight") or ".fc" in k for k in changed)
    line = Line.between(zs, theta_ft)
    at0 = line.at(0.0)
    assert all(torch.equal(at0[k], zs[k]) for k in zs)  # alpha 0: theta_zs bit-exactly


def test_a_soup_of_identical_finetunes_equals_the_finetune(tiny_clip_dir, tmp_path):
    bundle, sets = _setup(tiny_clip_dir)
    finetune(bundle.model, sets, bundle.spec, _cfg())
    single = _tower(bundle.model)

    bundle2, sets2 = _setup(tiny_clip_dir)
    soup = {"name": "soup", "seeds": [0, 0]}
    res = finetune(bundle2.model, sets2, bundle2.spec, _cfg(recipe=soup), out_dir=tmp_path, fingerprint="s")
    assert _drift(_tower(bundle2.model), single) == 0.0
    assert res.recipe == "soup" and len(res.info["ingredients"]) == 2 and res.steps == 8
    assert (tmp_path / "ingredient-1" / "checkpoint" / "state.json").is_file()


def test_greedy_soup_ranks_ingredients_on_held_out_data(tiny_clip_dir):
    bundle, sets = _setup(tiny_clip_dir)
    xv, yv = _colours(48, bundle.spec.crop, 5)
    val = [TrainingSet("colours", xv, yv, sets[0].head)]
    soup = {"name": "soup", "lrs": [1e-5, 3e-3], "method": "greedy"}
    res = finetune(bundle.model, sets, bundle.spec, _cfg(recipe=soup), val_sets=val)
    assert len(res.info["individual_val"]) == 2 and res.info["kept"][0] == int(np.argmax(res.info["individual_val"]))
    with pytest.raises(PaintError, match="a greedy soup needs held-out validation data"):
        finetune(bundle.model, sets, bundle.spec, _cfg(recipe=soup))


def test_a_head_learning_recipe_is_refused_where_heads_are_not_scored(tiny_clip_dir):
    from paint.evaluation.results import MemoryStore
    from paint.pipeline.operation import finetune_tower
    from paint.pipeline.pool import PoolTask, TaskPool

    bundle, sets = _setup(tiny_clip_dir)
    s = sets[0]
    task = PoolTask(
        "colours",
        "patch",
        ("red", "green", "blue"),
        ("a photo of the {}.",),
        {"train": s.images, "val": s.images},
        {"train": s.labels, "val": s.labels},
        {},
        s.head,
        {},
    )
    pool = TaskPool(bundle.model, bundle.spec, [task], MemoryStore())
    for recipe in ("lp-ft", {"name": "soup", "base": "lp-ft", "seeds": [0]}):
        with pytest.raises(PaintError, match="learns a head per patching task"):
            finetune_tower(pool, _tower(bundle.model), ["colours"], _cfg(recipe=recipe), None, False, "")

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

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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

    from paint.train.recipes.lora import LoraRecipe, inject_lora, merged_deltas, remove_lora

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


@pytest.mark.parametrize(
    "recipe",
    [{"name": "l2-sp", "strength": 0.1}, {"name": "lora", "rank": 2}, "lp-ft", "flyp"],
    ids=["l2-sp", "lora", "lp-ft", "flyp"],
)
def test_every_recipe_runs_in_every_multitask_mode_and_resumes(tiny_clip_dir, tmp_path, recipe):
    from paint.evaluation.results import ResultsStore
    from paint.pipeline.multitask import MultitaskRun, run_mode
    from paint.pipeline.operation import start_state
    from paint.pipeline.pool import TaskPool
    from paint.selection import SelectionConfig
    from tests.test_multitask import _prepared

    bundle = load_clip(str(tiny_clip_dir))
    tasks = [
        _prepared(bundle, "rgb", "patch", ["red", "green", "blue"], [[200, 30, 30], [30, 200, 30], [30, 30, 200]], 0),
        _prepared(bundle, "cmy", "patch", ["cat", "dog"], [[30, 200, 200], [200, 200, 30]], 10),
        _prepared(bundle, "sup", "support", ["circle", "square"], [[90, 90, 90], [160, 160, 160]], 20),
    ]
    sel = SelectionConfig(strategy="grid", objective="mean_accuracy", alphas=[0.0, 0.5, 1.0])
    pool = TaskPool(bundle.model, bundle.spec, tasks, ResultsStore(tmp_path / "results.jsonl"), 64, bundle=bundle)
    cfg = _cfg(max_steps=2, lr=1e-2, recipe=recipe)
    theta_zs = start_state(pool, _tower(bundle.model), cfg)
    thetas = {}
    for resume in (False, True):  # the second pass resumes every finished checkpoint: same weights
        ctx = MultitaskRun(pool, theta_zs, sel, cfg, tmp_path, resume, "fp")
        for mode in ("joint", "sequential", "parallel"):
            r = run_mode(ctx, mode)
            assert set(r.theta) == set(theta_zs) and all(0.0 <= a <= 1.0 for a in r.alphas)
            if resume:
                assert _drift(r.theta, thetas[mode]) == 0.0
            thetas[mode] = r.theta
    assert (tmp_path / "joint" / "finetune" / "checkpoint" / "state.json").is_file()
    if recipe == "lp-ft":  # each fine-tune learned the heads of the tasks it trained on, and they ride the state
        from safetensors.torch import load_file

        assert set(load_file(str(tmp_path / "joint" / "finetune" / "probe-heads.safetensors"))) == {"rgb", "cmy"}
        seq = tmp_path / "sequential" / "1-cmy" / "finetune" / "probe-heads.safetensors"
        assert set(load_file(str(seq))) == {"cmy"}
        assert {"head::rgb", "head::cmy"} <= set(thetas["parallel"])


def test_patch_with_lpft_scores_the_learned_head_and_resumes(tiny_clip_dir, tmp_path, capsys):
    import json

    import yaml
    from safetensors.torch import load_file

    from paint.cli import main

    cfg = {
        "model": str(tiny_clip_dir),
        "output_dir": str(tmp_path / "run"),
        "patch_tasks": ["digits"],
        "finetune": {**{k: v for k, v in BASE.items() if k != "cpu"}, "recipe": {"name": "lp-ft", "probe_steps": 20}},
        "selection": {"alphas": [0.0, 0.5, 1.0]},
        "threads": 1,
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["patch", str(path)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finetune"]["recipe"] == "lp-ft" and summary["finetune"]["trainable_params"] > 0
    probe = load_file(str(run / "finetune" / "probe-heads.safetensors"))["digits"]
    patched = load_file(str(run / "patched-heads.safetensors"))["digits"]
    assert patched.shape == probe.shape
    if summary["alpha"] == 1.0:
        assert torch.equal(patched, probe)
    n = len((run / "results.jsonl").read_text().splitlines())
    (run / "summary.json").unlink()
    assert main(["patch", str(path), "--resume"]) == 0  # same heads, same line id: nothing re-evaluated
    assert len((run / "results.jsonl").read_text().splitlines()) == n

    cfg["output_dir"], cfg["selection"] = str(tmp_path / "run2"), {"strategy": "derivative", "objective": "loss_sum"}
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["patch", str(path)]) == 2
    # refused at config validation, before any work (it once failed after the fine-tune)
    assert "differentiates along the image tower only; choose another selection.strategy" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def _flyp_sets(bundle, sets):
    s = sets[0]
    return [TrainingSet(s.name, s.images, s.labels, s.head, ("red", "green", "blue"), ("a photo of the {}.", "{}"))]


def test_flyp_loss_is_clips_contrastive_loss_on_a_fixed_batch(tiny_clip_dir):
    from paint.data.preprocess import normalize
    from paint.train.recipes.flyp import FlypLoss, caption_table

    bundle, sets = _setup(tiny_clip_dir)
    fsets = _flyp_sets(bundle, sets)
    table, layout = caption_table(fsets, bundle.tokenizer, 16)
    assert len(table["input_ids"]) == 6 and layout == [(0, 2)]
    loss_fn = FlypLoss(table, layout, bundle.spec, seed=3)
    images, labels = fsets[0].images[:8], torch.as_tensor(fsets[0].labels[:8])
    task_ids = torch.zeros(8, dtype=torch.long)
    rows = loss_fn.caption_rows(labels, task_ids)
    assert torch.equal(rows // 2, labels)  # each image's caption is one of its own class's prompts
    loss_fn.set_epoch(0)
    ours = loss_fn(bundle.model, (images, labels, task_ids))
    loss_fn.set_epoch(0)  # the same draw again
    rows = loss_fn.caption_rows(labels, task_ids)
    with torch.no_grad():
        ref = bundle.model(
            input_ids=table["input_ids"][rows],
            attention_mask=table["attention_mask"][rows],
            pixel_values=normalize(images, bundle.spec.mean, bundle.spec.std),
            return_loss=True,
        ).loss
    torch.testing.assert_close(ours.detach(), ref, rtol=1e-5, atol=1e-6)


def test_flyp_changes_both_towers_and_not_the_logit_scale(tiny_clip_dir):
    bundle, sets = _setup(tiny_clip_dir)
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    res = finetune(bundle.model, _flyp_sets(bundle, sets), bundle.spec, _cfg(recipe="flyp"), tokenizer=bundle.tokenizer)
    after = bundle.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("vision_model.") for k in changed) and any(k.startswith("text_model.") for k in changed)
    assert "text_projection.weight" in changed and "logit_scale" not in changed
    assert res.recipe == "flyp" and _cfg(recipe="flyp").recipe.coverage().text_tower and res.trainable_params > 0
    with pytest.raises(PaintError, match="flyp needs the model's tokenizer"):
        finetune(bundle.model, _flyp_sets(bundle, sets), bundle.spec, _cfg(recipe="flyp"))


def test_patch_with_flyp_interpolates_both_towers_and_rebuilds_heads(tiny_clip_dir, tmp_path):
    import json

    import yaml
    from safetensors.torch import load_file

    from paint.cli import main

    cfg = {
        "model": str(tiny_clip_dir),
        "output_dir": str(tmp_path / "run"),
        "patch_tasks": ["digits"],
        "finetune": {**{k: v for k, v in BASE.items() if k != "cpu"}, "lr": 1e-2, "recipe": "flyp"},
        "selection": {"alphas": [0.0, 0.5, 1.0], "objective": "mean_accuracy"},
        "threads": 1,
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["patch", str(path)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finetune"]["recipe"] == "flyp"
    zs = load_file(str(tiny_clip_dir / "model.safetensors"))
    ft = load_file(str(run / "finetune" / "checkpoint" / "trainable.safetensors"))
    assert any(k.startswith("text_model.") for k in ft) and any(k.startswith("vision_model.") for k in ft)
    patched = load_file(str(run / "model" / "model.safetensors"))
    key = "text_projection.weight"
    expected = torch.lerp(zs[key], ft[key], summary["alpha"]) if summary["alpha"] not in (0.0, 1.0) else None
    if expected is not None:
        torch.testing.assert_close(patched[key], expected)
    else:
        assert torch.equal(patched[key], zs[key] if summary["alpha"] == 0.0 else ft[key])


def test_a_line_over_both_towers_is_scored_with_heads_rebuilt_from_its_text_tower(tiny_clip_dir):
    from paint.evaluation.results import MemoryStore
    from paint.pipeline.pool import Line, PoolTask, TaskPool

    bundle, sets = _setup(tiny_clip_dir)
    s = sets[0]
    task = PoolTask(
        "colours", "patch", ("red", "green", "blue"), ("a photo of the {}.",),
        {"val": s.images}, {"val": s.labels}, {}, s.head, {},
    )  # fmt: skip
    pool = TaskPool(bundle.model, bundle.spec, [task], MemoryStore(), bundle=bundle)
    full_zs = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    full_ft = dict(full_zs)
    full_ft["text_projection.weight"] = torch.randn_like(full_zs["text_projection.weight"])
    line = Line.between(full_zs, full_ft)
    zero_shot = pool.evaluate_state(_tower(bundle.model), "val")["colours"]
    assert pool.evaluate_line(line, 0.0, "val")["colours"] == zero_shot  # the zero-shot text tower's heads
    moved = pool.evaluate_line(line, 1.0, "val")["colours"]
    assert moved["loss"] != zero_shot["loss"]  # heads from the new text tower, not the cached zero-shot ones
    pool.model.load_state_dict(full_ft, strict=False)
    from paint.models.heads import build_head

    head = build_head(bundle, ["red", "green", "blue"], ["a photo of the {}."])
    assert evaluate_split(bundle.model, head, s.images, s.labels, bundle.spec)["loss"] == pytest.approx(moved["loss"])
    with pytest.raises(PaintError, match="cannot rebuild heads from a text tower"):
        TaskPool(bundle.model, bundle.spec, [task], MemoryStore()).evaluate_line(line, 0.5, "val")


def test_recipes_that_add_to_the_state_are_refused_by_callers_that_start_from_the_tower_alone(tiny_clip_dir):
    """The studies that patch through operation.patch start from the image tower: lp-ft and flyp say so."""
    from paint.evaluation.results import MemoryStore
    from paint.pipeline.operation import finetune_tower, start_state
    from paint.pipeline.pool import PoolTask, TaskPool
    from paint.types import head_key

    bundle, sets = _setup(tiny_clip_dir)
    s = sets[0]
    task = PoolTask(
        "colours", "patch", ("red", "green", "blue"), ("a photo of the {}.",),
        {"train": s.images, "val": s.images}, {"train": s.labels, "val": s.labels}, {}, s.head, {},
    )  # fmt: skip
    pool = TaskPool(bundle.model, bundle.spec, [task], MemoryStore(), bundle=bundle)
    cases = [
        ("lp-ft", "learns a head per patching task"),
        ({"name": "soup", "base": "lp-ft", "seeds": [0]}, "learns a head per patching task"),
        ("flyp", "fine-tunes both towers"),
    ]
    for recipe, what in cases:
        with pytest.raises(PaintError, match=f"recipe .* {what}, which this workflow does not carry along"):
            finetune_tower(pool, _tower(bundle.model), ["colours"], _cfg(recipe=recipe), None, False, "")
    # start_state adds what each recipe's line needs; the default adds nothing
    zs = _tower(bundle.model)
    assert start_state(pool, zs, _cfg()) == zs
    assert set(start_state(pool, zs, _cfg(recipe="lp-ft"))) == set(zs) | {head_key("colours")}
    assert "text_projection.weight" in start_state(pool, zs, _cfg(recipe="flyp"))


def test_set_reaches_a_recipes_own_settings():
    from paint.config import apply_overrides, parse_config
    from paint.pipeline.patch import PatchConfig

    data = {"output_dir": "x", "patch_tasks": ["digits"], "finetune": {"recipe": {"name": "lora"}}}
    cfg = parse_config(PatchConfig, apply_overrides(PatchConfig, data, ["finetune.recipe.rank=4"]))
    assert cfg.finetune.recipe.name == "lora" and cfg.finetune.recipe.rank == 4
    with pytest.raises(PaintError, match=r"unknown key 'bogus' in finetune.recipe \(known: base, dropout"):
        apply_overrides(PatchConfig, data, ["finetune.recipe.bogus=1"])


@pytest.mark.parametrize(
    ("recipe", "strategy"),
    [
        ("lp-ft", "derivative"),
        ("flyp", "derivative"),
        ({"name": "soup", "base": "lp-ft", "seeds": [0, 1]}, "derivative"),
        ("lp-ft", "surrogate"),  # surrogate on loss_sum uses the exact derivative too
    ],
)
def test_a_recipe_whose_line_leaves_the_image_tower_refuses_the_derivative_strategy_before_any_work(
    tiny_clip_dir, tmp_path, capsys, recipe, strategy
):
    import yaml

    from paint.cli import main

    cfg = {
        "model": str(tiny_clip_dir),
        "output_dir": str(tmp_path / "run"),
        "patch_tasks": ["digits"],
        "support_tasks": ["shapes"],
        "finetune": {"epochs": 1, "max_steps": 1, "recipe": recipe},
        "selection": {"strategy": strategy, "objective": "loss_sum"},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["patch", str(tmp_path / "p.yaml")]) == 2
    assert "differentiates along the image tower only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any output
    compare = {k: v for k, v in cfg.items() if k != "finetune"} | {"recipes": ["frozen-head", {"recipe": recipe}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(compare))
    assert main(["compare", str(tmp_path / "c.yaml")]) == 2
    assert "interpolates" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_lora_target_modules_that_match_nothing_are_refused_before_preprocessing(tiny_clip_dir, tmp_path, capsys):
    import yaml

    from paint.cli import main

    cfg = {
        "model": str(tiny_clip_dir),
        "output_dir": str(tmp_path / "run"),
        "patch_tasks": ["digits"],
        "support_tasks": ["shapes"],
        "finetune": {"epochs": 1, "max_steps": 1, "recipe": {"name": "lora", "target_modules": ["nope_proj"]}},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["patch", str(tmp_path / "p.yaml")]) == 2
    assert "lora: no Linear layer of the image tower is named nope_proj" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # no cache/, no config.yaml

"""A recipe defined in this file alone, registered with one line, runs through fine-tuning and `paint patch`.

Nothing in paint names it: the config validates it by name from the registry, the fine-tune asks it
what to train, the pipeline asks it what its line covers and lets it check the model first.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import numpy as np
import pytest
import torch
from pydantic import Field
from safetensors.torch import load_file

from paint.config import parse_config
from paint.errors import PaintError
from paint.models.clip import load_clip
from paint.models.heads import zeroshot_head
from paint.pipeline.patch import PatchConfig, run_patch
from paint.train.finetune import FinetuneConfig, TrainingSet, finetune
from paint.train.recipes.base import Recipe, image_tower_names
from paint.train.recipes.registry import RECIPES, register

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")


class LastLayers(Recipe):
    """Fine-tune only the image tower's last ``layers`` transformer layers (and what follows them)."""

    name: Literal["last-layers"] = "last-layers"
    layers: int = Field(1, ge=1, description="how many of the last encoder layers train")
    paper: ClassVar[str] = "a test of the recipe interface"

    def check_model(self, model: torch.nn.Module) -> None:
        depth = _depth(model)
        if self.layers > depth:
            raise PaintError(f"last-layers: the image tower has {depth} layers, fewer than layers={self.layers}")

    def trainable(self, model: torch.nn.Module) -> list[str]:
        first = _depth(model) - self.layers
        return [n for n in image_tower_names(model) if not (m := LAYER.match(n)) or int(m.group(1)) >= first]

    def info(self) -> dict[str, Any]:
        return {"layers": self.layers}


def _depth(model: torch.nn.Module) -> int:
    return 1 + max(int(m.group(1)) for n, _ in model.named_parameters() if (m := LAYER.match(n)))


@pytest.fixture(autouse=True)
def _registered():
    register(LastLayers)  # the one line a plugin adds (or ``@register`` on the class)
    yield
    del RECIPES["last-layers"]  # the table is process-wide: other test modules expect the built-in recipes


BASE = dict(epochs=2, lr=3e-3, batch_size=32, warmup_steps=0, weight_decay=0.0, max_steps=4, seed=0)


def _colours(n: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n)
    base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.float32)
    imgs = base[labels][:, :, None, None] + rng.normal(0, 25, (n, 3, size, size))
    return torch.from_numpy(imgs.clip(0, 255).astype(np.uint8)), labels


def test_the_registered_recipe_is_a_config_value_with_its_own_settings():
    cfg = FinetuneConfig.model_validate({"recipe": {"name": "last-layers", "layers": 2}})
    assert isinstance(cfg.recipe, LastLayers) and cfg.recipe.layers == 2
    assert cfg.model_dump()["recipe"] == {"name": "last-layers", "layers": 2}  # written back with its fields
    assert FinetuneConfig.model_validate(cfg.model_dump()) == cfg  # and read back the same
    assert FinetuneConfig.model_validate({"recipe": "last-layers"}).recipe.layers == 1  # a name alone
    assert FinetuneConfig(recipe={"name": "soup", "base": "last-layers", "seeds": [0]}).recipe.base.layers == 1
    data = {"output_dir": "x", "patch_tasks": ["digits"], "finetune": {"recipe": {"name": "last-layers", "layers": 0}}}
    with pytest.raises(PaintError, match=r"^config: finetune\.recipe\.layers: Input should be greater than or equal"):
        parse_config(PatchConfig, data)
    with pytest.raises(PaintError, match="unknown fine-tuning recipe 'nope'; choose from: .*last-layers"):
        parse_config(PatchConfig, {**data, "finetune": {"recipe": "nope"}})


def test_registering_needs_a_name_of_its_own():
    class Nameless(Recipe):
        pass

    class Impostor(Recipe):
        name: Literal["last-layers"] = "last-layers"

    with pytest.raises(PaintError, match="recipe class Nameless needs a default name"):
        register(Nameless)
    with pytest.raises(PaintError, match="recipe 'last-layers' is registered already"):
        register(Impostor)
    assert register(LastLayers) is LastLayers  # registering the same class again changes nothing


def test_the_plugin_fine_tunes_what_it_declares_and_nothing_else(tiny_clip_dir, tmp_path):
    bundle = load_clip(str(tiny_clip_dir))
    head = zeroshot_head(bundle, ["red", "green", "blue"], ["a photo of the {}."])
    x, y = _colours(96, bundle.spec.crop)
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    cfg = FinetuneConfig(**BASE, cpu=True, recipe="last-layers")
    res = finetune(bundle.model, [TrainingSet("colours", x, y, head)], bundle.spec, cfg, tmp_path, fingerprint="p")
    after = bundle.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trained = set(cfg.recipe.trainable(bundle.model))
    assert changed and changed <= trained
    assert not any(k.startswith("vision_model.encoder.layers.0.") for k in changed)  # the first layer is frozen
    assert any(k.startswith("vision_model.encoder.layers.1.") for k in changed)
    assert res.recipe == "last-layers" and res.info == {"layers": 1} and res.steps == 4
    assert res.trainable_params == sum(p.numel() for n, p in bundle.model.named_parameters() if n in trained)
    assert (tmp_path / "checkpoint" / "state.json").is_file()


def _patch_config(out, tiny_clip_dir, recipe) -> PatchConfig:
    data = {
        "model": str(tiny_clip_dir),
        "output_dir": str(out),
        "patch_tasks": ["digits"],
        "finetune": {**BASE, "recipe": recipe},
        "selection": {"alphas": [0.0, 0.5, 1.0]},
    }
    return parse_config(PatchConfig, data)


def test_paint_patch_runs_the_plugin_resumes_it_and_lets_it_refuse_a_model_first(tiny_clip_dir, tmp_path):
    cfg = _patch_config(tmp_path / "run", tiny_clip_dir, {"name": "last-layers", "layers": 1})
    summary = run_patch(cfg)  # what `paint patch` runs
    assert summary["finetune"]["recipe"] == "last-layers" and summary["finetune"]["recipe_info"] == {"layers": 1}
    assert 0.0 <= summary["alpha"] <= 1.0
    trained = load_file(str(tmp_path / "run" / "finetune" / "checkpoint" / "trainable.safetensors"))
    assert trained and not any(k.startswith("vision_model.encoder.layers.0.") for k in trained)
    (tmp_path / "run" / "summary.json").unlink()
    again = run_patch(cfg, resume=True)  # the finished checkpoint is reused, not retrained
    assert again["finetune"]["resumed_from_epoch"] == 0 and again["alpha"] == summary["alpha"]  # max_steps: 1 epoch

    with pytest.raises(PaintError, match="last-layers: the image tower has 2 layers, fewer than layers=9"):
        run_patch(_patch_config(tmp_path / "deep", tiny_clip_dir, {"name": "last-layers", "layers": 9}))
    assert not (tmp_path / "deep").exists()  # refused before any output

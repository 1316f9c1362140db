"""The fine-tuning settings of a run config (``finetune:``), whose ``recipe`` is any registered recipe.

``finetune.recipe`` is a name (``recipe: lora``) or a mapping with the recipe's own settings
(``recipe: {name: lora, rank: 4}``), validated by the registered class
(:mod:`paint.train.recipes.registry`); every recipe ends in a weight delta that interpolation,
selection and the reports consume unchanged. Adding a recipe touches nothing here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from paint.config import StrictModel
from paint.train.recipes.frozen_head import FrozenHeadRecipe
from paint.train.recipes.registry import recipe_field

# Any registered recipe (made after paint.train.recipes registered the built-in ones: see recipe_field).
RecipeSpec = recipe_field()


class FinetuneConfig(StrictModel):
    """Fine-tuning settings (defaults: PAINT's official code's; for ViT-L/14 use lr 1e-5) and the recipe.

    Example:
        >>> from paint import FinetuneConfig
        >>> FinetuneConfig(epochs=20, lr=3e-4, warmup_steps=20).batch_size
        128
    """

    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-5, gt=0)
    batch_size: int = Field(128, ge=1)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(500, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    seed: int = 0
    # auto: bf16 autocast on a CUDA GPU with native bf16 (fp32 master weights), fp32 elsewhere (CPU unchanged).
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    max_steps: int | None = Field(None, ge=1)
    cpu: bool = False
    tf32: bool | None = Field(None, description="TF32 matmuls on CUDA (None: on); ignored on a CPU")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less GPU memory")
    compile: bool = Field(False, description="torch.compile the model's forward for the run (first steps compile)")
    # Training augmentation on the cached uint8 images: random resized crop, optionally with a
    # horizontal flip (not for digits, text or traffic signs, where a flip changes the class).
    augment: Literal["none", "crop", "crop-flip"] = "none"
    loader_workers: int | None = Field(
        None, ge=0, description="training-loader worker processes (default: 0 on a CPU, up to 4 on a GPU)"
    )
    recipe: RecipeSpec = Field(default_factory=FrozenHeadRecipe, description="how the image tower is fine-tuned")
    log_with: Literal["tensorboard"] | None = Field(
        None,
        description="tensorboard: log loss and lr per step and the patching tasks' validation accuracy per epoch "
        "to <run>/finetune/tensorboard (Accelerate's tracker; results.jsonl stays the record)",
    )

    def identity(self) -> str:
        """The settings that decide theta_ft, as JSON (a run fingerprint's part): how data is loaded does not."""
        return self.model_dump_json(exclude=RUNTIME_ONLY)


# FinetuneConfig fields that change how fast a run goes, never its result (a resume may change them).
RUNTIME_ONLY = frozenset({"loader_workers", "gradient_checkpointing", "log_with"})

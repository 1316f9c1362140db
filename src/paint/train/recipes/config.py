"""Fine-tuning settings and the recipe specs (configs only: no torch, no model code).

A recipe is a configured fine-tuning method: ``finetune.recipe`` in any run config, a name
(``recipe: lora``) or a mapping with the recipe's own settings (``recipe: {name: lora, rank: 4}``).
Every recipe ends in a weight delta over the image tower that interpolation, selection and the
reports consume unchanged; the implementations live in :mod:`paint.train.recipes.registry`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from paint.config import StrictModel

PAINT = "Ilharco et al. 2022, Patching open-vocabulary models by interpolating weights (arXiv:2208.05592)"
LPFT = "Kumar et al. 2022, Fine-Tuning can Distort Pretrained Features (arXiv:2202.10054)"
L2SP = "Li et al. 2018, Explicit Inductive Bias for Transfer Learning with CNNs (arXiv:1802.01483)"
LORA = "Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models (arXiv:2106.09685)"
SOUPS = "Wortsman et al. 2022, Model soups (arXiv:2203.05482)"
FLYP = "Goyal et al. 2023, Finetune like you pretrain (arXiv:2212.00638)"


class FrozenHeadRecipe(StrictModel):
    """PAINT's recipe: the image tower trains against the frozen zero-shot heads."""

    name: Literal["frozen-head"] = "frozen-head"


class L2SPRecipe(StrictModel):
    """Frozen-head plus ``strength * ||theta - theta_zs||^2`` over the trained image-tower tensors.

    ``strength`` is the paper's lambda (a sum over every tensor, not a mean); AdamW's own weight
    decay still applies as configured (set ``weight_decay: 0`` for the paper's form).
    """

    name: Literal["l2-sp"] = "l2-sp"
    strength: float = Field(0.01, ge=0, description="lambda of the L2-SP penalty")


class LPFTRecipe(StrictModel):
    """Linear probe (heads fitted on frozen features, from the zero-shot heads) then fine-tune against them."""

    name: Literal["lp-ft"] = "lp-ft"
    probe_steps: int = Field(100, ge=1, description="L-BFGS iterations of the linear probe")
    probe_l2: float = Field(0.0, ge=0, description="weight of ||W - W_zs||^2 in the probe's loss")


class LoraRecipe(StrictModel):
    """Low-rank adapters (through peft) on the image tower's projections; the merged delta is theta_ft - theta_zs."""

    name: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0, description="peft's lora_alpha: the delta is scaled by lora_alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        min_length=1,
        description="names of the image tower's Linear layers that get adapters",
    )


class FlypRecipe(StrictModel):
    """Contrastive fine-tuning of both towers, the class prompts as captions; the line covers both towers.

    Each image is paired with one of its class's prompts (a template drawn per image and epoch);
    the loss is CLIP's symmetric contrastive loss over the batch. The logit scale stays frozen.
    Heads on the line are rebuilt from the interpolated text tower.
    """

    name: Literal["flyp"] = "flyp"


BaseRecipe = Annotated[
    Union[FrozenHeadRecipe, L2SPRecipe, LPFTRecipe, LoraRecipe],
    Field(discriminator="name"),
]


def _named(value: Any) -> Any:
    """``recipe: lora`` is short for ``recipe: {name: lora}``."""
    return {"name": value} if isinstance(value, str) else value


class SoupRecipe(StrictModel):
    """Several fine-tunes of one recipe (a seed or a learning rate each), averaged, then interpolated."""

    name: Literal["soup"] = "soup"
    base: BaseRecipe = Field(default_factory=FrozenHeadRecipe)
    seeds: list[int] | None = Field(None, min_length=1, description="one ingredient per seed")
    lrs: list[float] | None = Field(None, min_length=1, description="one ingredient per learning rate")
    method: Literal["uniform", "greedy"] = "uniform"

    @field_validator("base", mode="before")
    @classmethod
    def _base_named(cls, v: Any) -> Any:
        return _named(v)

    @field_validator("lrs")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(x <= 0 for x in v):
            raise ValueError("every learning rate must be > 0")
        return v

    @model_validator(mode="after")
    def _one_list(self):
        if (self.seeds is None) == (self.lrs is None):
            raise ValueError("a soup needs exactly one of seeds or lrs (one ingredient per entry)")
        return self

    def ingredients(self) -> list[dict[str, Any]]:
        """The fine-tuning overrides of each ingredient: ``[{"seed": 0}, ...]`` or ``[{"lr": 1e-4}, ...]``."""
        if self.seeds is not None:
            return [{"seed": s} for s in self.seeds]
        return [{"lr": lr} for lr in self.lrs or []]


RecipeSpec = Annotated[
    Union[FrozenHeadRecipe, L2SPRecipe, LPFTRecipe, LoraRecipe, FlypRecipe, SoupRecipe],
    Field(discriminator="name"),
]
RECIPE_NAMES = ("frozen-head", "lp-ft", "flyp", "l2-sp", "lora", "soup")


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

    @field_validator("recipe", mode="before")
    @classmethod
    def _recipe_named(cls, v: Any) -> Any:
        return _named(v)

    def identity(self) -> str:
        """The settings that decide theta_ft, as JSON (a run fingerprint's part): how data is loaded does not."""
        return self.model_dump_json(exclude=RUNTIME_ONLY)


# FinetuneConfig fields that change how fast a run goes, never its result (a resume may change them).
RUNTIME_ONLY = frozenset({"loader_workers", "gradient_checkpointing", "log_with"})

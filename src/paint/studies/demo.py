"""``paint demo``: the whole PAINT pipeline on the shipped default model, offline, no arguments.

The default model is a small CLIP that paint pretrained on its synthetic world
(``configs/pretrain-default.yaml``; the record is ``assets/default-model/BUILD.json``). It is
strong zero-shot on the world's support tasks and poor on scikit-learn's real handwritten
digits, the analogue of CLIP on MNIST. The demo patches it on the digits and shows that the
digits improve a lot while the support tasks stay close to zero-shot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from paint.data.spec import TaskSpec
from paint.models.clip import DEFAULT_MODEL
from paint.pipeline.patch import PatchConfig, run_patch
from paint.selection import SelectionConfig
from paint.train.finetune import FinetuneConfig

DEMO_SUPPORT = ("shapes", "colours", "rendered-digits", "backgrounds")


def demo_config(output_dir: str | Path, quick: bool = False, model: str = DEFAULT_MODEL) -> PatchConfig:
    """The demo's resolved config; ``quick`` cuts training and the sweep to seconds (tests)."""
    finetune = FinetuneConfig(epochs=20, lr=3e-4, batch_size=128, warmup_steps=20, weight_decay=0.1, seed=0)
    # The paper keeps ImageNet, one support number, within about a point: here the mean of the
    # support tasks plays that role (the per-task bound is reported beside it). This is
    # SelectionConfig's default rule, spelled out because it is the demo's claim. The demo reads
    # every validation image at every alpha (race: null, not the default screened race): its
    # trade-off plot shows the whole validation curve, and its splits are small.
    selection = SelectionConfig(strategy="grid", objective="constrained", epsilon=1.0, constraint="mean", race=None)
    if quick:
        finetune = finetune.model_copy(update={"epochs": 1, "max_steps": 3})
        selection = selection.model_copy(update={"alphas": [0.0, 0.5, 1.0]})
    return PatchConfig(
        model=model,
        output_dir=str(output_dir),
        patch_tasks=[TaskSpec(name="digits", val_fraction=0.2)],
        support_tasks=[TaskSpec(name=n) for n in DEMO_SUPPORT],
        finetune=finetune,
        selection=selection,
    )


def run_demo(
    output_dir: str | Path = "runs/demo", quick: bool = False, resume: bool = False, model: str = DEFAULT_MODEL
) -> dict[str, Any]:
    """Run the demo; returns the same summary as ``paint patch`` (also in ``summary.json``)."""
    return run_patch(demo_config(output_dir, quick, model), resume=resume)

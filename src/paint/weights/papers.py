"""The papers the merge methods implement: each registry entry cites its own (see :mod:`paint.weights.methods`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    """A paper a method implements."""

    title: str
    arxiv: str

    def cite(self) -> str:
        return f"{self.title} (arXiv:{self.arxiv})"


PAINT = Paper("Patching open-vocabulary models by interpolating weights", "2208.05592")
WISE_FT = Paper("Robust fine-tuning of zero-shot models", "2109.01903")
SOUPS = Paper(
    "Model soups: averaging weights of multiple fine-tuned models improves accuracy without increasing inference time",
    "2203.05482",
)
TASK_ARITHMETIC = Paper("Editing Models with Task Arithmetic", "2212.04089")
TIES = Paper("TIES-Merging: Resolving Interference When Merging Models", "2306.01708")
DARE = Paper(
    "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch", "2311.03099"
)
MODEL_STOCK = Paper("Model Stock: All we need is just a few fine-tuned models", "2403.19522")
REGMEAN = Paper("Dataless Knowledge Fusion by Merging Weights of Language Models", "2212.09849")
ISO = Paper("No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces", "2502.04959")
TSV = Paper("Task Singular Vectors: Reducing Task Interference in Model Merging", "2412.00081")

"""``paint merge``'s config: the base, the models (with their weights, per-block weights and RegMean tasks),
the method and its parameters, where the output goes; validated at the edge with one-line errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from pydantic import Field, field_validator

from paint.config import StrictModel
from paint.data.spec import TaskSpec
from paint.errors import PaintError
from paint.weights.methods import GREEDY_SOUP, METHODS
from paint.weights.stream import (
    DEFAULT_CHUNK_BYTES,
)
from paint.weights.writer import parse_size

CARRIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
)
CONFIG_NAME = "merge_config.yaml"
SUMMARY_NAME = "merge_summary.json"

Evaluate = Callable[[Mapping[str, torch.Tensor]], float]


class ModelInput(StrictModel):
    """One model to merge."""

    path: str = Field(description="HF directory, .safetensors or legacy .bin/.pt file")
    weight: float = Field(
        1.0,
        description="weight (linear) or coefficient (task arithmetic, TIES, DARE; iso_c, iso_cts, tsv_m: of its task vector)",
    )
    block_weights: dict[str, float] | None = Field(
        None, description="task_arithmetic: one coefficient per image-tower block (embeddings, layer.<i>, head)"
    )
    task: TaskSpec | None = Field(
        None, description="regmean: the model's own task; images of its train split give its Gram matrices"
    )


class MergeConfig(StrictModel):
    """A merge: base, models with weights, method with parameters, output.

    Example:
        >>> from paint import MergeConfig
        >>> cfg = MergeConfig(base="clip-b32/", models=[{"path": "ft-mnist/"}, {"path": "ft-svhn/"}], method="ties",
        ...                   parameters={"density": 0.2}, output="merged/")  # doctest: +SKIP
    """

    base: str = Field(description="base (pre-trained / zero-shot) checkpoint; its config and tokenizer are copied")
    models: list[ModelInput] = Field(min_length=1)
    method: str = Field(
        "linear",
        description=f"one of {', '.join([*METHODS, GREEDY_SOUP])} (greedy_soup needs evaluate_on or an evaluate callback)",
    )
    parameters: dict[str, Any] = Field(default_factory=dict, description="the method's parameters")
    output: str = Field(description="output directory (an HF checkpoint)")
    include: list[str] | None = Field(
        None, description="fnmatch patterns of keys to merge; others are copied from base"
    )
    max_shard_size: int | str = Field("2GB", description="largest output shard, e.g. 500MB")
    chunk_size: int | str = Field(
        DEFAULT_CHUNK_BYTES, description="row-chunk size: larger tensors are merged in chunks"
    )
    hash_inputs: bool = Field(True, description="record sha256 of every input file in the model card")
    hash_cache: bool = Field(
        True,
        description="reuse the sha256 of an input file unchanged since paint hashed it (same path, device, inode, "
        "size, mtime, ctime); the cache is $PAINT_CACHE, else $XDG_CACHE_HOME/paint, else ~/.cache/paint",
    )
    overwrite: bool = False
    evaluate_on: TaskSpec | None = Field(
        None, description="a task whose validation split scores the merge (required by greedy_soup); head from the base"
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS and v != GREEDY_SOUP:
            raise ValueError(f"unknown method {v!r}; choose one of: {', '.join([*METHODS, GREEDY_SOUP])}")
        return v

    @field_validator("max_shard_size", "chunk_size")
    @classmethod
    def _size(cls, v: int | str) -> int | str:
        try:
            parse_size(v)
        except PaintError as e:
            raise ValueError(str(e)) from None
        return v

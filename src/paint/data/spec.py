"""How a config names a task: a built-in, a catalog entry, or the user's own data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from paint.config import StrictModel


class TaskSpec(StrictModel):
    """One task in a config. A bare string in YAML means ``{name: <string>}`` (a built-in).

    ``source`` says where the images come from:
      - ``builtin``: generated or shipped with paint (``digits``, the synthetic world's tasks);
      - ``catalog``: a benchmark task from paint's catalog (CLIP's class names and templates),
        read from ``path`` in the layout its official download unpacks to;
      - ``folder``: an image-folder tree (one sub-folder per class) at ``path``;
      - ``csv``: a CSV of ``path,label`` rows at ``path``;
      - ``hf``: a Hugging Face dataset (a local ``save_to_disk``/parquet/imagefolder directory, or a
        hub id when online) with ``image_column`` and ``label_column``.

    Example:
        >>> from paint import TaskSpec
        >>> TaskSpec(name="digits").name
        'digits'
        >>> spec = TaskSpec(name="parts", source="folder", path="data/parts", templates=["a photo of a {}."])
    """

    name: str
    source: Literal["builtin", "catalog", "folder", "csv", "hf"] = "builtin"
    path: str | None = None
    classnames: list[str] | None = None
    templates: list[str] | None = None
    image_column: str = "image"
    label_column: str = "label"
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    val_max: int = Field(5000, ge=1)
    split_seed: int = 0
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # held out (seed 0) only when the data has no test split
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)  # unreadable images tolerated before an error
    seed: int = 0  # generator seed for synthetic built-ins

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data):
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _needs_path(self):
        if self.source in ("folder", "csv", "hf", "catalog") and not self.path:
            raise ValueError(f"task {self.name!r}: source {self.source!r} needs a path")
        return self

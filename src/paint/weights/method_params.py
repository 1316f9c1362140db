"""The parameters of each merge method, validated before any tensor is read (see :mod:`paint.weights.methods`)."""

from __future__ import annotations

from pydantic import Field

from paint.config import StrictModel
from paint.weights.regmean import RegMeanParams
from paint.weights.sparsify import Rescale

__all__ = [
    "DareParams",
    "IsoCParams",
    "IsoCtsParams",
    "LinearParams",
    "NoParams",
    "RegMeanParams",
    "TaskArithmeticParams",
    "TiesParams",
    "TsvMParams",
]


class LinearParams(StrictModel):
    """Weighted average of the models (the base is not part of the average unless listed)."""

    normalize: bool = Field(True, description="divide by the sum of the weights")


class TaskArithmeticParams(StrictModel):
    """``base + scaling * sum_i w_i * (theta_i - base)`` (mergekit's ``task_arithmetic``)."""

    scaling: float = Field(1.0, ge=-100.0, le=100.0, description="lambda applied to the merged task vector")
    normalize: bool = Field(False, description="divide the summed task vectors by the sum of the weights")


class TiesParams(StrictModel):
    """TIES with mergekit's semantics: per-tensor trim, elect by summed mass, weighted disjoint mean."""

    density: float = Field(0.2, gt=0.0, le=1.0, description="fraction of each tensor's task vector kept (top-k)")
    scaling: float = Field(1.0, ge=-100.0, le=100.0, description="lambda applied to the merged task vector")
    normalize: bool = Field(
        True, description="divide by the summed weights of the models that agree with the elected sign"
    )


class DareParams(StrictModel):
    """DARE with mergekit's defaults (``dare_linear`` / ``dare_ties``): L1-norm rescale, no normalization."""

    drop_rate: float = Field(0.5, ge=0.0, lt=1.0, description="probability p of dropping each delta entry")
    scaling: float = Field(1.0, ge=-100.0, le=100.0, description="lambda applied to the merged task vector")
    seed: int = Field(0, ge=0, description="seed; each tensor's mask is seeded from (seed, tensor name, model index)")
    rescale: Rescale = Field(
        "l1", description="l1: match each tensor's L1 norm (mergekit); paper: divide by 1 - p; none"
    )
    normalize: bool = Field(False, description="divide by the summed weights (of the agreeing models with TIES)")


class IsoCParams(StrictModel):
    """Iso-C with fusion_bench's semantics and defaults (``ISO_C_Merge``: scaling_factor 1, no excluded keys)."""

    scaling: float = Field(
        1.0, ge=-100.0, le=100.0, description="lambda applied to the merged task vector (fusion_bench's scaling_factor)"
    )
    exclude_keys: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns of 2-D tensors merged by the mean task vector instead (fusion_bench's exclude_keys)",
    )


class IsoCtsParams(IsoCParams):
    """Iso-CTS with fusion_bench's semantics and defaults (``ISO_CTS_Merge``: common_space_fraction 0.8)."""

    common_space_fraction: float = Field(
        0.8, ge=0.0, le=1.0, description="share of each 2-D tensor's rank given to the common subspace"
    )


class TsvMParams(StrictModel):
    """TSV-M with fusion_bench's semantics and defaults (``TaskSingularVectorMerging``: alpha 1)."""

    scaling: float = Field(
        1.0, ge=-100.0, le=100.0, description="lambda applied to the merged task vector (fusion_bench's alpha)"
    )
    rank_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="share of each 2-D tensor's rank split among the tasks: each keeps int(rank * fraction / tasks)",
    )
    exclude_keys: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns of 2-D tensors merged by the mean task vector instead (fusion_bench's exclude_keys)",
    )


class NoParams(StrictModel):
    """The method takes no parameters."""

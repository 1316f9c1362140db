"""Per-block interpolation and task arithmetic: one coefficient per block of the image tower.

PAINT ships one alpha for the whole tower. Granularity matters (task-wise vs layer-wise
AdaMerging, 2310.02575; LiNeS, 2410.17146, scales updates linearly with depth), so these
functions take one coefficient per *block*:

- ``embeddings``: patch and position embeddings, class token, the pre-encoder norm;
- ``layer.<i>``: every tensor of encoder layer i (any depth: read from the parameter names);
- ``head``: the final norm and the projection (everything after the last layer).

theta_l = theta_zs_l + alpha_l (theta_ft_l - theta_zs_l), tensor by tensor with the same
:func:`paint.weights.ops.lerp_tensor` as :func:`paint.weights.ops.interpolate`, so equal alphas
reproduce it bit for bit. Pure functions on state dicts; no model code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import torch

from paint.errors import PaintError
from paint.types import StateDict
from paint.weights.ops import check_compatible, finite_coefficient, lerp_tensor

EMBEDDINGS = "embeddings"
HEAD = "head"
_LAYER = re.compile(r"\.(?:layers|layer|blocks|resblocks)\.(\d+)\.")
_BEFORE_LAYERS = ("embed", "pre_layrnorm", "pre_layernorm", "ln_pre", "class_token", "cls_token")

BlockAlphas = Mapping[str, float]  # block name -> coefficient


def block_of(key: str) -> str:
    """The block a parameter belongs to: ``embeddings``, ``layer.<i>`` or ``head``.

    Encoder layers are found by their index in the name (``...layers.3...``, as in every HF
    vision transformer); before them come the embeddings and the pre-encoder norm; everything
    else (final norm, projection, a pooling head) is the head.
    """
    m = _LAYER.search(key)
    if m:
        return f"layer.{int(m.group(1))}"
    if any(part in key for part in _BEFORE_LAYERS):
        return EMBEDDINGS
    return HEAD


def block_names(keys: Iterable[str]) -> list[str]:
    """The blocks of a state dict's keys, input to output: embeddings, layer.0 .. layer.L-1, head.

    Raises when the layer indices have gaps (a state that is not one whole tower).
    """
    found = {block_of(k) for k in keys}
    layers = sorted(int(b.split(".")[1]) for b in found if b.startswith("layer."))
    if layers and layers != list(range(len(layers))):
        missing = sorted(set(range(layers[-1] + 1)) - set(layers))
        raise PaintError(f"the image tower has no tensors for layer {missing[0]}; is it a whole tower?")
    return [b for b in (EMBEDDINGS, *(f"layer.{i}" for i in layers), HEAD) if b in found]


def block_depths(blocks: Sequence[str]) -> dict[str, float]:
    """Depth of each block in [0, 1], evenly spaced input to output (LiNeS's depth scale)."""
    if len(blocks) == 1:
        return {blocks[0]: 0.0}
    return {b: i / (len(blocks) - 1) for i, b in enumerate(blocks)}


def linear_alphas(blocks: Sequence[str], first: float, last: float) -> dict[str, float]:
    """alpha_l = a + b * depth_l with a = ``first`` and a + b = ``last`` (LiNeS-style, one line per tower).

    With ``first`` and ``last`` in [0, 1] every alpha_l is in [0, 1] too (a convex combination).
    """
    return {b: first + (last - first) * d for b, d in block_depths(blocks).items()}


def uniform_alphas(blocks: Sequence[str], alpha: float) -> dict[str, float]:
    """The same coefficient for every block (PAINT's single alpha, as a per-block vector)."""
    return {b: float(alpha) for b in blocks}


def _alpha_for(key: str, alphas: BlockAlphas) -> float:
    block = block_of(key)
    if block not in alphas:
        raise PaintError(f"no coefficient for block {block!r} (tensor {key!r}); give one per block: {sorted(alphas)}")
    return finite_coefficient(alphas[block], f"alpha of block {block!r}")


def check_block_alphas(alphas: BlockAlphas, allow_extrapolation: bool = False) -> None:
    """Refuse a NaN or infinite coefficient, or one outside [0, 1] unless extrapolating, naming its block."""
    for b, a in alphas.items():
        finite_coefficient(a, f"alpha of block {b!r}")
        if not allow_extrapolation and not 0.0 <= a <= 1.0:
            raise PaintError(f"alpha {a} of block {b!r} is outside [0, 1]; set allow_extrapolation to extrapolate")


def interpolate_blocks(
    sd0: StateDict, sd1: StateDict, alphas: BlockAlphas, allow_extrapolation: bool = False
) -> dict[str, torch.Tensor]:
    """theta_zs + alpha_l (theta_ft - theta_zs) per block l, over floating-point tensors.

    Integer and boolean tensors are copied from ``sd0`` (as :func:`paint.weights.ops.interpolate`).

    Args:
        sd0: theta_zs, the zero-shot image tower.
        sd1: theta_ft, the fine-tuned image tower (same keys, shapes, dtypes).
        alphas: one coefficient per block of :func:`block_names` (extra names are refused).
        allow_extrapolation: permit coefficients outside [0, 1].
    """
    check_block_alphas(alphas, allow_extrapolation)
    check_compatible(sd0, sd1, ("zero-shot model", "fine-tuned model"))
    extra = sorted(set(alphas) - set(block_names(sd0)))
    if extra:
        raise PaintError(f"coefficient for block {extra[0]!r}, which the image tower does not have")
    return {k: lerp_tensor(t0, sd1[k], _alpha_for(k, alphas)) for k, t0 in sd0.items()}


def add_block_task_vectors(
    base: StateDict, vectors: Sequence[StateDict], coefficients: Sequence[BlockAlphas]
) -> dict[str, torch.Tensor]:
    """``base + sum_i c_i[block(k)] * tau_i[k]``: task arithmetic with one coefficient per block and task.

    The same sum as :func:`paint.weights.ops.add_task_vectors`, in the same order and dtype, so
    equal coefficients per block reproduce it bit for bit (layer-wise AdaMerging's merge).
    """
    if len(vectors) != len(coefficients):
        raise PaintError(f"{len(vectors)} task vectors but {len(coefficients)} coefficient vectors")
    out = {k: v.clone() for k, v in base.items()}
    for tau, coeffs in zip(vectors, coefficients):
        for k, d in tau.items():
            c = _alpha_for(k, coeffs)
            out[k] = (out[k].to(torch.promote_types(out[k].dtype, torch.float32)) + c * d).to(base[k].dtype)
    return out


def mean_alpha(alphas: BlockAlphas) -> float:
    """The plain mean of the block coefficients (a one-number summary for tables and plots)."""
    return float(sum(alphas.values()) / max(1, len(alphas)))

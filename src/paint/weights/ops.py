"""Pure functions on state dicts: compatibility checks and interpolation.

PAINT and WiSE-FT ship ``theta = (1 - alpha) * theta_zs + alpha * theta_ft``; only
floating-point tensors are mixed, integer and boolean buffers are copied from the first
state dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from paint.errors import PaintError
from paint.types import IMAGE_TOWER_PREFIXES, StateDict, is_image_tower_key  # noqa: F401 (re-exported)

KeyFilter = Callable[[str], bool]


def check_compatible(sd0: StateDict, sd1: StateDict, names: tuple[str, str] = ("first", "second")) -> None:
    """Raise :class:`PaintError` naming the first key, shape or dtype that differs."""
    missing = sorted(set(sd0) - set(sd1))
    extra = sorted(set(sd1) - set(sd0))
    if missing:
        raise PaintError(
            f"checkpoints differ: tensor {missing[0]!r} is in the {names[0]} but not in the {names[1]} "
            f"({len(missing)} such keys); are they the same architecture?"
        )
    if extra:
        raise PaintError(
            f"checkpoints differ: tensor {extra[0]!r} is in the {names[1]} but not in the {names[0]} "
            f"({len(extra)} such keys); are they the same architecture?"
        )
    for key in sd0:
        a, b = sd0[key], sd1[key]
        if a.shape != b.shape:
            raise PaintError(
                f"checkpoints differ: tensor {key!r} has shape {tuple(a.shape)} in the {names[0]} "
                f"and {tuple(b.shape)} in the {names[1]}"
            )
        if a.dtype != b.dtype:
            raise PaintError(
                f"checkpoints differ: tensor {key!r} has dtype {a.dtype} in the {names[0]} "
                f"and {b.dtype} in the {names[1]}"
            )


def finite_coefficient(value: float, what: str = "alpha") -> float:
    """``value`` as a float, or a one-line :class:`PaintError` when it is NaN or infinite.

    A NaN or infinite alpha (or merge weight) would turn every mixed tensor into NaN or inf
    without any error; every place a coefficient enters the weight maths calls this first.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PaintError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise PaintError(f"{what} {value} is not a finite number")
    return number


def check_alpha(alpha: float, allow_extrapolation: bool = False) -> float:
    """``alpha`` as a float: finite, and in [0, 1] unless extrapolating (else a one-line :class:`PaintError`)."""
    alpha = finite_coefficient(alpha)
    if not allow_extrapolation and not 0.0 <= alpha <= 1.0:
        raise PaintError(f"alpha {alpha} is outside [0, 1]; set allow_extrapolation to extrapolate")
    return alpha


def lerp_tensor(t0: torch.Tensor, t1: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) * t0 + alpha * t1, exact at alpha 0 and 1, computed in float32 or wider."""
    alpha = finite_coefficient(alpha)
    if not t0.is_floating_point():
        return t0.clone()
    work = torch.promote_types(t0.dtype, torch.float32)
    out = torch.lerp(t0.to(work), t1.to(work), float(alpha))
    return out.to(t0.dtype)


def interpolate(
    sd0: StateDict,
    sd1: StateDict,
    alpha: float,
    keys: KeyFilter | None = None,
    allow_extrapolation: bool = False,
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * sd0 + alpha * sd1`` over floating-point tensors selected by ``keys``.

    Tensors not selected, and integer or boolean tensors, are copied from ``sd0``.

    Args:
        sd0: theta_zs, the zero-shot weights.
        sd1: theta_ft, the fine-tuned weights (same keys, shapes, dtypes).
        alpha: mixing coefficient; outside [0, 1] only with ``allow_extrapolation``.
        keys: which keys to mix (default: all).
        allow_extrapolation: permit alpha < 0 or alpha > 1.

    Example:
        >>> import torch
        >>> from paint import interpolate
        >>> theta = interpolate({"w": torch.zeros(2)}, {"w": torch.ones(2)}, 0.25)
        >>> theta["w"]
        tensor([0.2500, 0.2500])
    """
    alpha = check_alpha(alpha, allow_extrapolation)
    check_compatible(sd0, sd1, ("zero-shot model", "fine-tuned model"))
    out: dict[str, torch.Tensor] = {}
    for key, t0 in sd0.items():
        if keys is not None and not keys(key):
            out[key] = t0.clone()
        else:
            out[key] = lerp_tensor(t0, sd1[key], alpha)
    return out


def task_vector(base: StateDict, finetuned: StateDict, keys: KeyFilter | None = None) -> dict[str, torch.Tensor]:
    """``finetuned - base`` over floating-point tensors selected by ``keys``.

    Example:
        >>> import torch
        >>> from paint import task_vector
        >>> task_vector({"w": torch.ones(2)}, {"w": torch.full((2,), 3.0)})["w"]
        tensor([2., 2.])
    """
    check_compatible(base, finetuned, ("base model", "fine-tuned model"))
    return {k: finetuned[k] - base[k] for k in base if base[k].is_floating_point() and (keys is None or keys(k))}


def add_task_vectors(base: StateDict, vectors: list[StateDict], coefficients: list[float]) -> dict[str, torch.Tensor]:
    """``base + sum_i c_i * tau_i``; keys absent from every vector are copied from ``base``.

    Example:
        >>> import torch
        >>> from paint import add_task_vectors
        >>> add_task_vectors({"w": torch.zeros(2)}, [{"w": torch.ones(2)}, {"w": torch.ones(2)}], [0.5, -1.0])["w"]
        tensor([-0.5000, -0.5000])
    """
    if len(vectors) != len(coefficients):
        raise PaintError(f"{len(vectors)} task vectors but {len(coefficients)} coefficients")
    coefficients = [finite_coefficient(c, f"coefficient of task vector {i}") for i, c in enumerate(coefficients)]
    out = {k: v.clone() for k, v in base.items()}
    for tau, c in zip(vectors, coefficients):
        for k, d in tau.items():
            out[k] = (out[k].to(torch.promote_types(out[k].dtype, torch.float32)) + float(c) * d).to(base[k].dtype)
    return out


def complete_state(theta_zs: StateDict, theta_ft: StateDict) -> dict[str, torch.Tensor]:
    """theta_ft restricted to theta_zs's keys; non-float buffers it lacks are taken from theta_zs.

    A fine-tuning checkpoint holds trained parameters only, not integer buffers.

    Example:
        >>> zs = {"w": torch.zeros(2), "n": torch.tensor([3])}
        >>> complete_state(zs, {"w": torch.ones(2)})["n"]
        tensor([3])
    """
    missing = [k for k in theta_zs if k not in theta_ft and theta_zs[k].is_floating_point()]
    if missing:
        raise PaintError(
            f"the fine-tuned weights lack image-tower tensor {missing[0]!r}; are they from the same architecture?"
        )
    out = {k: (theta_ft[k] if k in theta_ft else theta_zs[k]).to(theta_zs[k].device) for k in theta_zs}
    check_compatible(theta_zs, out, ("zero-shot image tower", "fine-tuned image tower"))
    return out

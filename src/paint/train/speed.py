"""How a training run uses its device: mixed precision, TF32, gradient checkpointing, ``torch.compile``.

Each choice is a small pure function of the request and the device (testable without a GPU),
and each global or model-level switch is a context manager that undoes itself when the run ends,
so a fine-tune leaves neither the process's TF32 flags nor the model's checkpointing changed.

Defaults (issue 16): on CUDA, bf16 autocast where the GPU has native bf16 (master weights stay
fp32: autocast casts per op, the parameters and AdamW state are never converted) and TF32
matmuls; on a CPU neither, so CPU results are bit-for-bit those of a plain fp32 run.
Checkpointing and compile are opt-in everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from paint.errors import PaintError

PRECISIONS = ("auto", "no", "fp16", "bf16")

log = logging.getLogger(__name__)


def resolve_precision(requested: str, device_type: str, bf16_ok: bool) -> str:
    """The mixed precision a run uses: ``"no"``, ``"fp16"`` or ``"bf16"``.

    ``"auto"`` is bf16 on a CUDA device with native bf16 (Ampere and later) and fp32 (``"no"``)
    anywhere else, so a CPU run is unchanged. An explicit ``"bf16"`` on a device without bf16
    falls back to fp32 (the caller warns): emulated bf16 is slower than fp32.

    Args:
        requested: the configured value, one of :data:`PRECISIONS`.
        device_type: the training device's type (``"cuda"``, ``"cpu"``, ...).
        bf16_ok: whether that device computes in bf16 natively (CPU autocast does).
    """
    if requested not in PRECISIONS:
        raise PaintError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    if requested == "auto":
        return "bf16" if device_type == "cuda" and bf16_ok else "no"
    if requested == "bf16" and not bf16_ok:
        return "no"
    return requested


def autocast_dtype(precision: str, device_type: str) -> torch.dtype | None:
    """The dtype the training loop autocasts to for a resolved precision; None: no autocast (fp32).

    ``"fp16"`` autocasts on an accelerator only (with a gradient scaler): on a CPU it trains in
    fp32, as Accelerate's own mixed precision did there.
    """
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16" and device_type != "cpu":
        return torch.float16
    return None


def resolve_tf32(requested: bool | None, device_type: str) -> bool:
    """Whether fp32 matmuls and convolutions may use TF32 tensor cores: on CUDA unless turned off; never elsewhere."""
    if device_type != "cuda":
        return False
    return True if requested is None else requested


def bf16_native(device_type: str) -> bool:
    """Whether ``device_type`` computes bf16 natively: CPU autocast does; CUDA from Ampere on (not emulated)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return device_type == "cpu"


@contextmanager
def tf32_scope(enabled: bool | None) -> Iterator[None]:
    """Set TF32 for CUDA matmuls and cuDNN inside the block; restore the previous flags after it.

    ``None`` leaves the flags alone (a CPU run). Only the legacy ``allow_tf32`` flags are read and
    written: torch 2.13 refuses to read them after a mix of the legacy and the ``fp32_precision``
    APIs, and setting through the legacy API keeps both views consistent.
    """
    if enabled is None:
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


@contextmanager
def checkpointing_scope(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Gradient checkpointing on ``model`` inside the block (non-reentrant), off again after it.

    Non-reentrant checkpointing recomputes each layer's activations in the backward pass and works
    when some inputs need no gradient (the frozen text tower) and with peft's LoRA layers. A model
    that had checkpointing on already keeps it.
    """
    if not enabled:
        yield
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise PaintError(f"gradient_checkpointing: {type(model).__name__} does not support gradient checkpointing")
    was_on = checkpointing_on(model)
    if not was_on:
        set_checkpointing(model, True)
    try:
        yield
    finally:
        if not was_on:
            set_checkpointing(model, False)


def checkpointing_on(model: nn.Module) -> bool:
    """Whether a transformers model has activation (gradient) checkpointing on."""
    name = (
        "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
    )
    return bool(getattr(model, name, False))


def set_checkpointing(model: nn.Module, on: bool) -> None:
    """Non-reentrant activation checkpointing on or off on a transformers model.

    transformers 5.2x renamed ``gradient_checkpointing_*`` to ``activation_checkpointing_*`` (the old
    names warn, and go in v6); older releases have only the old names.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


def runtime_record(
    device_type: str, precision: str, tf32: bool, gradient_checkpointing: bool, compiled: bool
) -> dict[str, Any]:
    """What a run did, for its result and summary (the resolved values, not the requested ones)."""
    return {
        "device": device_type,
        "mixed_precision": precision,
        "tf32": tf32,
        "gradient_checkpointing": gradient_checkpointing,
        "compile": compiled,
    }

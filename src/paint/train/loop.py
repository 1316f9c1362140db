"""The one training loop that fine-tuning and pretraining share.

It runs through Accelerate, so the same code trains on a CPU, one GPU, or many GPUs and
machines (``accelerate launch`` with DDP; FSDP is wired but unverified, see docs/scaling.md).
AdamW with decay on matrices only, linear warmup then cosine decay, gradient-norm clipping, a
progress bar, and the epoch-end checkpoint of :class:`paint.train.checkpoint.CheckpointSaver`
that ``resume=True`` continues from.

With N processes each rank sees its own shard of every epoch (``prepare_data_loader``), so a
step consumes N * batch_size examples and an epoch has about N times fewer steps. ``step``,
``warmup_steps`` and ``max_steps`` all count optimizer steps, which every rank takes together.

The losses stay on the device between log intervals: the host reads them (one sync, and one
reduction across ranks) every ``log_every`` steps and at each epoch's end, not at every step.
Training still stops with a :class:`PaintError` naming the first non-finite loss (too high a
learning rate), before that epoch's checkpoint is written, instead of exiting 0 with NaN weights
(the model in memory may hold the few steps taken after it; no checkpoint ever does).

How the device is used (:mod:`paint.train.speed`): ``mixed_precision="auto"`` is bf16 autocast on a
CUDA GPU with native bf16 and fp32 elsewhere; TF32 is on for CUDA runs (and restored after);
gradient checkpointing and ``torch.compile`` are opt-in. The loop autocasts itself (fp16 with a
gradient scaler, as nanoGPT does) and the Accelerator always runs in fp32: Accelerate allows one
precision per process, and a benchmark or a comparison trains with several one after the other.
``FitResult.runtime`` records what was used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedType, broadcast_object_list, parse_flag_from_env, set_seed
from torch import nn

from paint.errors import PaintError
from paint.progress import progress as tqdm
from paint.train.checkpoint import CheckpointSaver, Resumed
from paint.train.optim import make_optimizer, warmup_cosine
from paint.train.record import TRACKER_DIR, EpochLosses, FitResult, check_tracker, log_epoch
from paint.train.speed import (
    autocast_dtype,
    bf16_native,
    checkpointing_scope,
    resolve_precision,
    resolve_tf32,
    runtime_record,
    tf32_scope,
)

__all__ = ["FitResult", "LoopSettings", "fit"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]
LOG_EVERY = 50  # optimizer steps between two reads of the loss on the host
# torch.compile's backend for ``compile``; tests swap in "aot_eager", which traces the same graphs
# (forward and backward) without inductor's C++ build (~25 s for a tiny CLIP on a CPU).
COMPILE_BACKEND = "inductor"

log = logging.getLogger(__name__)


class LoopSettings(Protocol):
    """The optimisation settings :func:`fit` reads, by name: :class:`paint.train.recipes.config.FinetuneConfig`
    and the pretraining config both have them (each with its own defaults)."""

    epochs: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    seed: int
    mixed_precision: str  # "auto" | "no" | "fp16" | "bf16" (see paint.train.speed.resolve_precision)
    cpu: bool  # train on the CPU even when a GPU is present
    max_steps: int | None  # stop early (tests, budgets); None: every epoch
    tf32: bool | None
    gradient_checkpointing: bool
    compile: bool


def fit(
    model: nn.Module,
    trainable_names: list[str],
    make_loader: Callable[[int], Iterable],
    loss_fn: LossFn,
    cfg: LoopSettings,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
    desc: str = "train",
    on_epoch_end: Callable[[int, nn.Module], dict[str, float]] | None = None,
    log_with: str | None = None,
    log_every: int = LOG_EVERY,
) -> FitResult:
    """Train the parameters named in ``trainable_names``; every other one is frozen.

    Args:
        model: the module; parameters not in ``trainable_names`` get ``requires_grad=False``.
        trainable_names: names from ``model.named_parameters()`` to train.
        make_loader: epoch -> iterable of batches (seed the shuffle with the epoch so
            a resumed run sees the same order).
        loss_fn: (model, batch) -> scalar loss. If it has ``set_epoch(epoch)``, that is called
            before each epoch, so that randomness inside the loss is a function of the epoch.
        cfg: optimisation settings.
        checkpoint_dir: where the epoch-end checkpoint goes (``<dir>/checkpoint``; None: none).
        resume: continue from ``checkpoint_dir`` if it holds a checkpoint.
        fingerprint: identifies the run's inputs; resuming a different run is refused.
        desc: progress-bar label.
        on_epoch_end: optional (epoch, unwrapped model) -> metrics added to the history.
        log_with: ``"tensorboard"``: loss and lr per step, the epoch's record per epoch, under
            ``checkpoint_dir/tensorboard`` (needs a ``checkpoint_dir``).
        log_every: optimizer steps between two reads of the loss on the host.
    """
    names = set(trainable_names)
    params = [(n, p) for n, p in freeze_all_but(model, names) if n in names]
    set_seed(cfg.seed)
    precision = _precision(cfg.mixed_precision, _device_type(cfg.cpu), desc)
    acc = _accelerator(cfg.cpu, log_with, checkpoint_dir)
    device = acc.device.type
    optimizer = make_optimizer(params, cfg.lr, cfg.weight_decay)
    # Count steps on the sharded loader: with N processes each rank gets ~1/N of the batches.
    total = total_steps(cfg, len(acc.prepare_data_loader(make_loader(0))), desc)  # type: ignore[arg-type]
    # Not passed to accelerator.prepare: its wrapper steps the schedule num_processes times per
    # call (it assumes a schedule sized for one process); ours is sized in optimizer steps.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, total))
    amp = autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler(device, enabled=amp is torch.float16)
    fsdp = acc.distributed_type == DistributedType.FSDP
    saver = _saver(checkpoint_dir, fingerprint, acc, fsdp and scaler.is_enabled(), desc)
    tf32 = resolve_tf32(cfg.tf32, device)
    result = FitResult(runtime=runtime_record(device, precision, tf32, cfg.gradient_checkpointing, cfg.compile))
    # Every rank reads the checkpoint before wrapping, so all start from the same weights.
    step, start_epoch = _resume(saver.resume(resume), model, optimizer, scheduler, result)
    # TF32 and checkpointing hold for this run only: the flags and the model are as before afterwards.
    with tf32_scope(tf32 if device == "cuda" else None), checkpointing_scope(model, cfg.gradient_checkpointing):
        wrapped, optimizer = _wrap(acc, model, loss_fn, optimizer, cfg.compile)
        bar = tqdm(total=total, initial=step, desc=desc, disable=not acc.is_local_main_process)
        for epoch in range(start_epoch, cfg.epochs):
            if step >= total:
                break
            if hasattr(loss_fn, "set_epoch"):  # per-epoch randomness (augmentation): reseeded, so a resume repeats it
                loss_fn.set_epoch(epoch)
            losses = EpochLosses(acc, bar, epoch, step, desc, cfg.lr)
            for batch in acc.prepare_data_loader(make_loader(epoch)):
                with torch.autocast(device, dtype=amp, enabled=amp is not None):
                    loss = wrapped(batch).float()
                scaler.scale(loss).backward()
                if cfg.grad_clip and cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    acc.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
                _optimizer_step(optimizer, scheduler, scaler)
                optimizer.zero_grad(set_to_none=True)
                step += 1
                losses.add(loss.detach(), scheduler.get_last_lr()[0])
                bar.update(1)
                if losses.pending == log_every or step >= total:
                    losses.read()
                if step >= total:
                    break
            record = {
                "epoch": epoch,
                "step": step,
                "loss": losses.mean(),
                **_epoch_metrics(acc, wrapped, epoch, on_epoch_end),
            }
            result.history.append(record)
            log_epoch(acc, record, step)
            trained = {k: v for k, v in _unwrapped_state(acc, wrapped).items() if k in names}
            done = step >= total or epoch == cfg.epochs - 1
            saver.save(epoch, step, result.history, done, trained, None if fsdp else optimizer, scheduler)
            acc.wait_for_everyone()
        bar.close()
    result.steps = step
    _finish(acc, wrapped)
    return result


def _accelerator(cpu: bool, log_with: str | None, checkpoint_dir: Path | None) -> Accelerator:
    """The run's Accelerator, always in fp32 (the loop autocasts), with its tracker when one is asked for."""
    tracking = log_with is not None and checkpoint_dir is not None
    acc = Accelerator(
        cpu=cpu,
        mixed_precision="no",
        dataloader_config=DataLoaderConfiguration(non_blocking=True),  # a pinned batch's copy overlaps the step
        log_with=log_with if tracking else None,
        project_dir=str(checkpoint_dir) if tracking else None,
    )
    if tracking:
        check_tracker(log_with)
        acc.init_trackers(TRACKER_DIR)
    return acc


def _saver(directory: Path | None, fingerprint: str, acc: Accelerator, fp16_fsdp: bool, desc: str) -> CheckpointSaver:
    """The run's checkpoint saver (rank 0 writes); what FSDP cannot do is refused or warned of first."""
    if fp16_fsdp:
        raise PaintError(f"{desc}: fp16 under FSDP is not supported; use mixed_precision bf16")
    if acc.distributed_type == DistributedType.FSDP and directory is not None and acc.is_main_process:
        log.warning(
            "%s: FSDP run: checkpoints keep the weights but not the sharded optimizer state; a resume restarts AdamW",
            desc,
        )
    return CheckpointSaver(directory, fingerprint, writer=acc.is_main_process, desc=desc)


def _resume(
    resumed: Resumed | None, model: nn.Module, optimizer: Any, scheduler: Any, result: FitResult
) -> tuple[int, int]:
    """Load a checkpoint's weights, optimizer and schedule; (step, first epoch) to continue from."""
    if resumed is None:
        return 0, 0
    model.load_state_dict(resumed.trainable, strict=False)
    if resumed.optimizer is not None:
        optimizer.load_state_dict(resumed.optimizer)
    scheduler.load_state_dict(resumed.scheduler)
    result.history, result.resumed_from_epoch = resumed.history, resumed.epoch
    return resumed.step, resumed.epoch + 1


def _wrap(acc: Accelerator, model: nn.Module, loss_fn: LossFn, optimizer: Any, compile: bool) -> tuple[nn.Module, Any]:
    """Wrap for the launch; the loss runs inside the wrapper's forward.

    DDP arms its gradient all-reduce (and FSDP gathers its shards) in forward, and ``loss_fn`` may
    call submodules (vision_model, ...) directly.
    """
    module = _LossModule(model, loss_fn)
    if compile:
        # In place (nn.Module.compile): no ``_orig_mod.`` wrapper, so state-dict keys, checkpoints and
        # the model handed back are unchanged; the compiled call dies with this loss module.
        module.compile(backend=COMPILE_BACKEND)
    wrapped, optimizer = acc.prepare(module, optimizer)
    wrapped.train()
    return wrapped, optimizer


def _unwrapped_state(acc: Accelerator, wrapped: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state dict (a collective under FSDP: every rank calls it), without the wrapper's prefix."""
    full = acc.get_state_dict(wrapped)
    return {k[len("model.") :]: v for k, v in full.items() if k.startswith("model.")}


def _optimizer_step(optimizer: Any, scheduler: Any, scaler: torch.amp.GradScaler) -> None:
    """AdamW's step, then the schedule's, unless an fp16 overflow made the scaler skip the step."""
    before = scaler.get_scale() if scaler.is_enabled() else 0.0
    scaler.step(optimizer)
    scaler.update()
    if not scaler.is_enabled() or scaler.get_scale() >= before:  # the scale drops only on a skipped step
        scheduler.step()


def _epoch_metrics(acc: Accelerator, wrapped: nn.Module, epoch: int, on_epoch_end: Callable | None) -> dict:
    """The callback's metrics: rank 0 alone evaluates (it may export files), every rank receives them."""
    if on_epoch_end is None:
        return {}
    extra: list[Any] = [None]
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(wrapped).model
        unwrapped.eval()
        extra[0] = on_epoch_end(epoch, unwrapped)
        unwrapped.train()
    if acc.num_processes > 1:
        broadcast_object_list(extra, from_process=0)
    return extra[0] or {}


def _finish(acc: Accelerator, wrapped: nn.Module) -> None:
    """Close the tracker, unwrap, freeze everything again, release the device's memory."""
    if acc.trackers:
        acc.end_training()  # flushes and closes the event files
    model = acc.unwrap_model(wrapped).model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if acc.device.type != "cpu":
        # Hands the device cache back for what follows (evaluation). On a CPU there is no cache and
        # this would only be a full gc.collect() (~0.15 s a run, 7% of a short fine-tune, issue 16);
        # the optimizer state is freed by reference counting when the run is dropped.
        acc.free_memory()


def freeze_all_but(model: nn.Module, names: set[str]) -> list[tuple[str, nn.Parameter]]:
    """``requires_grad`` on exactly the named parameters; returns every (name, parameter)."""
    params = list(model.named_parameters())
    unknown = names - {n for n, _ in params}
    if unknown:
        raise PaintError(f"unknown trainable parameter {sorted(unknown)[0]!r}")
    for n, p in params:
        p.requires_grad_(n in names)
    return params


def total_steps(cfg: LoopSettings, steps_per_epoch: int, desc: str) -> int:
    """The run's optimizer steps: every epoch's, or ``max_steps`` if fewer (a warmup as long is warned of)."""
    if steps_per_epoch == 0:
        raise PaintError(f"{desc}: the training set yields no batch")
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warn_long_warmup(cfg.warmup_steps, total, desc)
    return total


def warn_long_warmup(warmup_steps: int, total: int, desc: str = "fine-tune") -> bool:
    """Warn (and return True) when the warmup is at least the run: the learning rate then climbs for the
    whole run and never decays (the defaults' 500 warmup steps are sized for long runs on real data)."""
    if total <= 0 or warmup_steps < total:
        return False
    log.warning(
        "%s: warmup_steps (%d) is not shorter than the run (%d optimizer steps): the learning rate rises for the "
        "whole run and never decays; set finetune.warmup_steps well below %d (e.g. %d)",
        desc,
        warmup_steps,
        total,
        total,
        max(1, total // 10),
    )
    return True


def _precision(requested: str, device_type: str, desc: str) -> str:
    """The run's resolved mixed precision; asking bf16 where it is not native warns and trains in fp32."""
    precision = resolve_precision(requested, device_type, bf16_native(device_type))
    if requested == "bf16" and precision != "bf16":
        log.warning("%s: bf16 was asked for but this %s device has no native bf16; training in fp32", desc, device_type)
    return precision


def _device_type(cpu: bool) -> str:
    """The device type Accelerate will train on, known before the Accelerator exists (its precision needs it)."""
    if cpu or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available():
        return "cpu"
    return "cuda"


class _LossModule(nn.Module):
    """``forward(batch) = loss_fn(model, batch)``: the module that DDP/FSDP wrap."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)

"""The one training loop that fine-tuning and pretraining share.

It runs through Accelerate, so the same code trains on a CPU, one GPU, or many GPUs and
machines (``accelerate launch`` with DDP; FSDP is wired but unverified, see docs/scaling.md).
AdamW, linear warmup then cosine decay, gradient-norm clipping, a progress bar, and an atomic
safetensors checkpoint at the end of every epoch that ``resume=True`` continues from.

With N processes each rank sees its own shard of every epoch (``prepare_data_loader``), so a
step consumes N * batch_size examples and an epoch has about N times fewer steps. ``step``,
``warmup_steps`` and ``max_steps`` all count optimizer steps, which every rank takes together.

Checkpoint layout (a directory, replaced atomically, written by rank 0 only)::

    trainable.safetensors   the trained tensors only (frozen ones are never written)
    optimizer.safetensors   AdamW state tensors, flattened as state.<param>.<name>
                            (absent under FSDP: its sharded state is not saved, see ``fit``)
    state.json              epoch, step, history, param groups, scheduler state, fingerprint
    checksums.json          SHA-256 of each file above, verified before a resume reads them
                            (flipped or truncated bytes are refused instead of trained on)

Training stops with a :class:`PaintError` at the first non-finite loss (too high a learning
rate), instead of running on to NaN weights and exiting 0.

How the device is used (:mod:`paint.train.speed`): ``mixed_precision="auto"`` is bf16 autocast on a
CUDA GPU with native bf16 and fp32 elsewhere; TF32 is on for CUDA runs (and restored after);
gradient checkpointing and ``torch.compile`` are opt-in. ``FitResult.runtime`` records what was used.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from paint.errors import PaintError
from paint.progress import progress as tqdm
from paint.train.speed import (
    bf16_native,
    checkpointing_scope,
    resolve_precision,
    resolve_tf32,
    runtime_record,
    tf32_scope,
)
from paint.utils import atomic_path, sha256_file

LossFn = Callable[[nn.Module, Any], torch.Tensor]
CHECKSUMS = "checksums.json"
TRAINABLE = "trainable.safetensors"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    """Optimisation settings shared by fine-tuning and pretraining."""

    epochs: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 500
    grad_clip: float = 1.0
    seed: int = 0
    mixed_precision: str = "auto"  # "auto" (bf16 on a CUDA GPU with bf16, else fp32) | "no" | "fp16" | "bf16"
    cpu: bool = False  # force CPU even when a GPU is present
    max_steps: int | None = None  # stop early (tests, budgets); None = all epochs
    tf32: bool | None = None  # TF32 matmuls/convolutions on CUDA (None: on); never on a CPU
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    compile: bool = False  # torch.compile the loss module (model forward included) for the run
    log_with: str | None = None  # "tensorboard": Accelerate's tracker under the checkpoint directory's parent

    @classmethod
    def from_settings(cls, settings: Any) -> "LoopConfig":
        """The loop settings of any config that has these fields by name (fine-tuning, pretraining)."""
        return cls(**{f: getattr(settings, f) for f in cls.__dataclass_fields__ if hasattr(settings, f)})


# torch.compile's backend for ``LoopConfig.compile``; tests swap in "aot_eager", which traces the
# same graphs (forward and backward) without inductor's C++ build (~25 s for a tiny CLIP on a CPU).
COMPILE_BACKEND = "inductor"


@dataclass
class FitResult:
    """A run's record; ``runtime`` is what it did (device, resolved precision, tf32, checkpointing, compile)."""

    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    resumed_from_epoch: int | None = None
    runtime: dict[str, Any] = field(default_factory=dict)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup from ~0 to 1, then cosine decay to 0 at ``total_steps``."""
    warmup_steps = max(0, min(warmup_steps, total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


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


TRACKER_DIR = "tensorboard"  # <finetune dir>/tensorboard: the event files TensorBoard reads


def _check_tracker(name: str | None) -> None:
    """A one-line error when the tracker's package is missing (before the first step)."""
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise PaintError(
                "finetune.log_with: tensorboard needs the tensorboard package: pip install 'paint[tensorboard]'"
            ) from None


def make_optimizer(
    named_params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms, embeddings' scales)."""
    decay, no_decay = [], []
    for name, p in named_params:
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def _flatten_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    state: dict[str, Any],
) -> None:
    """Write the checkpoint directory atomically (a crash keeps the previous one).

    ``optimizer=None`` writes no optimizer state (FSDP runs); a resume then restarts AdamW.
    """
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / TRAINABLE))
        opt_meta = None
        if optimizer is not None:
            opt_tensors, opt_meta = _flatten_optimizer_state(optimizer.state_dict())
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        full = dict(state, optimizer=opt_meta, scheduler=scheduler.state_dict())
        (tmp / "state.json").write_text(json.dumps(full, indent=1, default=float))
        sums = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        (tmp / CHECKSUMS).write_text(json.dumps({"sha256": sums}, indent=1))


RESUME_REMEDY = "delete {path} to start training over"
READ_REMEDY = "fine-tune again (a new paint patch run) to rebuild it"


def _recorded_sums(path: Path, remedy: str) -> dict[str, str] | None:
    """The SHA-256 of each file recorded in ``checksums.json`` (None: a checkpoint from before checksums)."""
    sums_path = path / CHECKSUMS
    if not sums_path.exists():
        log.warning("%s has no %s (written by an older paint): its contents are not verified", path, CHECKSUMS)
        return None
    try:
        sums = json.loads(sums_path.read_text())["sha256"]
        assert isinstance(sums, dict) and "state.json" in sums and TRAINABLE in sums
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise PaintError(f"checkpoint {path} is damaged ({CHECKSUMS} is unreadable); {remedy}") from None
    return sums


def verify_checkpoint(path: Path, names: Iterable[str] | None = None, remedy: str = RESUME_REMEDY) -> None:
    """Refuse a checkpoint whose files differ from the hashes stored when it was written.

    Args:
        path: the checkpoint directory.
        names: the files about to be read (default: every recorded file).
        remedy: what the one-line error tells the user to do; ``{path}`` is the checkpoint.

    A checkpoint from before checksums existed is accepted with a warning.
    """
    remedy = remedy.format(path=path)
    sums = _recorded_sums(path, remedy)
    if sums is None:
        return
    for name in sums if names is None else names:
        f = path / name
        if name not in sums:
            raise PaintError(f"checkpoint {path} is damaged ({name} has no recorded checksum); {remedy}")
        if not f.is_file():
            raise PaintError(f"checkpoint {path} is damaged ({name} is missing); {remedy}")
        if sha256_file(f) != sums[name]:
            raise PaintError(
                f"checkpoint file {f} is damaged (its SHA-256 differs from the one recorded when it was written); "
                f"{remedy}"
            )


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a directory written by :func:`save_checkpoint` (with or without checksums)."""
    return (path / CHECKSUMS).is_file() or (path / "state.json").is_file()


def load_checkpoint_file(file: Path, remedy: str = READ_REMEDY) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file, verified first when it lies in a checkpoint directory.

    Every reader of a finished run's checkpoint (``paint interpolate --run``, ``paint metrics``)
    goes through this (a resume through :func:`load_checkpoint`): a flipped or truncated byte is a
    one-line :class:`PaintError` naming the file, never wrong weights. A file outside a checkpoint
    has no recorded hash; it is read as it is, and an unreadable one is refused with one line too.
    """
    from safetensors import SafetensorError

    if is_checkpoint(file.parent):
        verify_checkpoint(file.parent, [file.name], remedy)
    try:
        return load_file(str(file))
    except (OSError, ValueError, SafetensorError) as e:
        raise PaintError(f"cannot read {file}: {str(e).splitlines()[0]}; {remedy.format(path=file.parent)}") from None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Return (trainable tensors, optimizer tensors (empty if none were saved), state), verified first."""
    from safetensors import SafetensorError

    verify_checkpoint(path)
    try:
        state = json.loads((path / "state.json").read_text())
        trainable = load_file(str(path / TRAINABLE))
        opt = load_file(str(path / "optimizer.safetensors")) if state.get("optimizer") is not None else {}
    except (OSError, ValueError, SafetensorError) as e:
        raise PaintError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}; delete it to start over") from e
    return trainable, opt, state


def _all_finite(accelerator: Any, finite: bool) -> bool:
    """Whether the loss is finite on every rank, given this rank's answer (all ranks agree, so they stop together)."""
    if accelerator.num_processes == 1:
        return finite
    flag = accelerator.reduce(torch.tensor([0.0 if finite else 1.0], device=accelerator.device), reduction="sum")
    return float(flag[0]) == 0.0


def fit(
    model: nn.Module,
    trainable_names: list[str],
    make_loader: Callable[[int], Iterable],
    loss_fn: LossFn,
    cfg: LoopConfig,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
    desc: str = "train",
    on_epoch_end: Callable[[int, nn.Module], dict[str, float]] | None = None,
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
        checkpoint_dir: where the epoch-end checkpoint goes (None: no checkpoint).
        resume: continue from ``checkpoint_dir`` if it holds a checkpoint.
        fingerprint: identifies the run's inputs; resuming a different run is refused.
        desc: progress-bar label.
        on_epoch_end: optional (epoch, unwrapped model) -> metrics added to the history.
    """
    from accelerate.utils import set_seed

    names = set(trainable_names)
    params = freeze_all_but(model, names)
    set_seed(cfg.seed)
    run = _Training.start(model, params, names, make_loader, loss_fn, cfg, checkpoint_dir, fingerprint, desc)
    run.restore(resume)
    rt = run.result.runtime
    # TF32 and checkpointing hold for this run only: the flags and the model are as before afterwards.
    with (
        tf32_scope(rt["tf32"] if rt["device"] == "cuda" else None),
        checkpointing_scope(model, cfg.gradient_checkpointing),
    ):
        run.prepare()
        for epoch in range(run.start_epoch, cfg.epochs):
            if run.step >= run.total:
                break
            record = run.train_epoch(epoch, make_loader(epoch))
            record.update(run.epoch_metrics(epoch, on_epoch_end))
            run.result.history.append(record)
            run.log_epoch(record)
            run.save(epoch)
            run.accelerator.wait_for_everyone()
        return run.finish()


def freeze_all_but(model: nn.Module, names: set[str]) -> list[tuple[str, nn.Parameter]]:
    """``requires_grad`` on exactly the named parameters; returns every (name, parameter)."""
    params = list(model.named_parameters())
    unknown = names - {n for n, _ in params}
    if unknown:
        raise PaintError(f"unknown trainable parameter {sorted(unknown)[0]!r}")
    for n, p in params:
        p.requires_grad_(n in names)
    return params


@dataclass
class _Training:
    """One run of :func:`fit`: the accelerator, the wrapped model, optimiser, schedule and counters."""

    model: nn.Module
    names: set[str]
    loss_fn: LossFn
    cfg: LoopConfig
    accelerator: Any
    optimizer: Any
    scheduler: Any
    total: int
    ckpt: Path | None
    fingerprint: str
    desc: str
    fsdp: bool
    result: FitResult = field(default_factory=FitResult)
    start_epoch: int = 0
    step: int = 0
    wrapped: Any = None
    bar: Any = None

    @classmethod
    def start(cls, model, params, names, make_loader, loss_fn, cfg, checkpoint_dir, fingerprint, desc) -> _Training:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        device_type = _device_type(cfg.cpu)
        precision = resolve_precision(cfg.mixed_precision, device_type, bf16_native(device_type))
        if cfg.mixed_precision == "bf16" and precision != "bf16":
            log.warning(
                "%s: bf16 was asked for but this %s device has no native bf16; training in fp32", desc, device_type
            )
        _allow_precision(precision)
        tracking = cfg.log_with is not None and checkpoint_dir is not None
        accelerator = Accelerator(
            cpu=cfg.cpu,
            mixed_precision=precision,
            log_with=cfg.log_with if tracking else None,
            project_dir=str(checkpoint_dir) if tracking else None,
        )
        if tracking:
            _check_tracker(cfg.log_with)
            accelerator.init_trackers(TRACKER_DIR)
        optimizer = make_optimizer([(n, p) for n, p in params if n in names], cfg.lr, cfg.weight_decay)
        # Count steps on the sharded loader: with N processes each rank gets ~1/N of the batches.
        steps_per_epoch = len(accelerator.prepare_data_loader(make_loader(0)))  # type: ignore[arg-type]
        if steps_per_epoch == 0:
            raise PaintError(f"{desc}: the training set yields no batch")
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        warn_long_warmup(cfg.warmup_steps, total, desc)
        # Not passed to accelerator.prepare: its wrapper steps the schedule num_processes times per
        # call (it assumes a schedule sized for one process); ours is sized in optimizer steps.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, total))
        ckpt = checkpoint_dir / "checkpoint" if checkpoint_dir is not None else None
        fsdp = accelerator.distributed_type == DistributedType.FSDP
        run = cls(model, names, loss_fn, cfg, accelerator, optimizer, scheduler, total, ckpt, fingerprint, desc, fsdp)
        actual = accelerator.device.type
        run.result.runtime = runtime_record(
            actual, precision, resolve_tf32(cfg.tf32, actual), cfg.gradient_checkpointing, cfg.compile
        )
        return run

    def restore(self, resume: bool) -> None:
        """Continue from the checkpoint when there is one (refused without ``resume`` or from another run)."""
        ckpt, desc = self.ckpt, self.desc
        if ckpt is not None and (ckpt / "state.json").exists():
            if not resume:
                raise PaintError(
                    f"{ckpt} already holds a checkpoint; pass --resume to continue it or use a new output directory"
                )
            # Every rank reads the checkpoint before wrapping, so all start from the same weights.
            tensors, opt_tensors, state = load_checkpoint(ckpt)
            if state.get("fingerprint") != self.fingerprint:
                raise PaintError(
                    f"the checkpoint in {ckpt} was made by a different run (config or data changed); "
                    "use a new output directory"
                )
            self.model.load_state_dict(tensors, strict=False)
            if state.get("optimizer") is not None:
                self.optimizer.load_state_dict(_unflatten_optimizer_state(opt_tensors, state["optimizer"]))
            elif self.accelerator.is_main_process:
                log.warning(
                    "%s: the checkpoint holds no optimizer state (FSDP run); AdamW restarts from zero moments", desc
                )
            self.scheduler.load_state_dict(state["scheduler"])
            self.start_epoch, self.step = state["epoch"] + 1, state["step"]
            self.result.history = state["history"]
            self.result.resumed_from_epoch = state["epoch"]
        if self.fsdp and ckpt is not None and self.accelerator.is_main_process:
            log.warning(
                "%s: FSDP run: checkpoints keep the weights but not the sharded optimizer state; a resume restarts AdamW",
                desc,
            )

    def prepare(self) -> None:
        """Wrap for the launch: the loss runs inside the wrapper's forward.

        DDP arms its gradient all-reduce (and FSDP gathers its shards) in forward, and loss_fn may
        call submodules (vision_model, ...) directly.
        """
        module = _LossModule(self.model, self.loss_fn)
        if self.cfg.compile:
            # In place (nn.Module.compile): no ``_orig_mod.`` wrapper, so state-dict keys, checkpoints and
            # the model handed back are unchanged; the compiled call dies with this loss module.
            module.compile(backend=COMPILE_BACKEND)
        self.wrapped, self.optimizer = self.accelerator.prepare(module, self.optimizer)
        self.wrapped.train()
        disable = not self.accelerator.is_local_main_process
        self.bar = tqdm(total=self.total, initial=self.step, desc=self.desc, disable=disable)

    def train_epoch(self, epoch: int, batches: Iterable) -> dict[str, Any]:
        """One epoch of optimizer steps (stopping at the step budget); the epoch's history record."""
        acc, cfg = self.accelerator, self.cfg
        loader = acc.prepare_data_loader(batches)
        if hasattr(self.loss_fn, "set_epoch"):  # per-epoch randomness (augmentation): reseeded, so a resume repeats it
            self.loss_fn.set_epoch(epoch)
        running, count = 0.0, 0
        for batch in loader:
            loss = self.wrapped(batch)
            # The step's one device-to-host sync: the finiteness check and the running mean share it.
            value = float(loss.detach())
            if not _all_finite(acc, math.isfinite(value)):
                self.bar.close()
                raise PaintError(
                    f"{self.desc}: the loss became {value} at epoch {epoch}, step {self.step + 1}; "
                    f"lower the learning rate (lr={cfg.lr:g}) or check the data"
                )
            acc.backward(loss)
            if cfg.grad_clip and cfg.grad_clip > 0:
                acc.clip_grad_norm_(self.wrapped.parameters(), cfg.grad_clip)
            self.optimizer.step()
            if not getattr(self.optimizer, "step_was_skipped", False):  # fp16 overflow: the step did not happen
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            running += value
            count += 1
            if acc.trackers:  # the loss is already on the host: logging adds no sync
                acc.log({"train/loss": value, "train/lr": self.scheduler.get_last_lr()[0]}, step=self.step)
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch, loss=f"{running / count:.4f}")
            if self.step >= self.total:
                break
        # Mean loss over every rank's batches, so the history is the same on all of them.
        sums = acc.reduce(torch.tensor([running, float(count)], device=acc.device), reduction="sum")
        return {"epoch": epoch, "step": self.step, "loss": float(sums[0]) / max(1.0, float(sums[1]))}

    def epoch_metrics(self, epoch: int, on_epoch_end: Callable[[int, nn.Module], dict[str, float]] | None) -> dict:
        """The callback's metrics: rank 0 alone evaluates (it may export files), every rank receives them."""
        if on_epoch_end is None:
            return {}
        from accelerate.utils import broadcast_object_list

        extra: list[Any] = [None]
        if self.accelerator.is_main_process:
            unwrapped = self.accelerator.unwrap_model(self.wrapped).model
            unwrapped.eval()
            extra[0] = on_epoch_end(epoch, unwrapped)
            unwrapped.train()
        if self.accelerator.num_processes > 1:
            broadcast_object_list(extra, from_process=0)
        return extra[0] or {}

    def log_epoch(self, record: dict[str, Any]) -> None:
        """The epoch's numbers (mean loss, the callback's validation accuracies) to the tracker, if any."""
        if self.accelerator.trackers:
            values = {f"epoch/{k}": float(v) for k, v in record.items() if k not in ("epoch", "step")}
            self.accelerator.log({k: v for k, v in values.items() if math.isfinite(v)}, step=self.step)

    def save(self, epoch: int) -> None:
        """The epoch-end checkpoint (trainable tensors, optimizer unless FSDP, schedule, history)."""
        if self.ckpt is None:
            return
        full = self.accelerator.get_state_dict(self.wrapped)  # collective under FSDP: every rank calls it
        if self.accelerator.is_main_process:
            state = {
                "epoch": epoch,
                "step": self.step,
                "history": self.result.history,
                "fingerprint": self.fingerprint,
                "done": self.step >= self.total or epoch == self.cfg.epochs - 1,
            }
            trainable = {k: v for k, v in _strip_prefix(full, "model.").items() if k in self.names}
            save_checkpoint(self.ckpt, trainable, None if self.fsdp else self.optimizer, self.scheduler, state)

    def finish(self) -> FitResult:
        """Close the bar, unwrap, freeze everything again, release the accelerator's memory."""
        self.bar.close()
        self.result.steps = self.step
        if self.accelerator.trackers:
            self.accelerator.end_training()  # flushes and closes the event files
        model = self.accelerator.unwrap_model(self.wrapped).model
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if self.accelerator.device.type != "cpu":
            # Hands the device cache back for what follows (evaluation). On a CPU there is no cache and
            # this would only be a full gc.collect() (~0.15 s a run, 7% of a short fine-tune, issue 16);
            # the optimizer state is freed by reference counting when the run is dropped.
            self.accelerator.free_memory()
        return self.result


class _LossModule(nn.Module):
    """``forward(batch) = loss_fn(model, batch)``: the module that DDP/FSDP wrap."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def _allow_precision(precision: str) -> None:
    """Let this process's next Accelerator take ``precision`` when an earlier run used another one.

    Accelerate keeps one process-wide state and refuses a second Accelerator with another mixed
    precision ("AcceleratorState has already been initialized"), which would stop a process that
    fine-tunes twice (a benchmark, a comparison) with different settings. Only the accelerator part
    is reset; the process part (device, process group) is kept.
    """
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _device_type(cpu: bool) -> str:
    """The device type Accelerate will train on, known before the Accelerator exists (its precision needs it)."""
    from accelerate.utils import parse_flag_from_env

    if cpu or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available():
        return "cpu"
    return "cuda"


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

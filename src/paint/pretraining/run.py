"""CLIP or SigLIP pretraining from scratch on the offline world's image-caption corpus.

``family: clip`` trains a ``CLIPModel`` with CLIP's symmetric contrastive loss and a learnable
temperature (the logit scale is capped at ln 100, as CLIP does); ``family: siglip`` trains a
``SiglipModel`` with SigLIP's pairwise sigmoid loss (Zhai et al. 2023, 2303.15343) and its
learnable temperature and bias, initialised as the paper does (t = 10, b = -10). Either runs,
on the architecture given under ``clip:``, through :func:`paint.train.loop.fit`:
every parameter trains, an "epoch" is a fixed number of steps so a checkpoint lands every
few minutes, and ``resume`` continues a cut-short run. After every epoch the current model
is exported as a standard HF checkpoint (model, tokenizer, image processor) and its
zero-shot accuracy on the world's support tasks is logged, so even an interrupted run
leaves a usable model.

Output directory::

    config.yaml      the resolved config
    tokenizer/       the tokenizer (trained once, reused on resume)
    checkpoint/      the training loop's resumable checkpoint
    model/           the latest HF checkpoint (CLIPModel or SiglipModel)
    log.jsonl        one record per epoch (loss, zero-shot accuracies, wall time)
    results.json     the final record
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState

from paint.data.preprocess import normalize, preprocess_split
from paint.data.task import SubsetSplit
from paint.errors import PaintError
from paint.evaluation.results import evaluate_split
from paint.models import clip as clip_family
from paint.models import siglip as siglip_family
from paint.models.clip import ClipBundle
from paint.models.families import FAMILIES
from paint.models.heads import build_head
from paint.pipeline.run import run_fingerprint
from paint.pipeline.rundir import DEFAULT_IGNORED, RunDir, run_scope
from paint.pretraining.build import (
    LOGIT_SCALE_MAX,
    PretrainConfig,
    build_clip,
    build_image_processor,
    export_hf,
    load_or_train_tokenizer,
)
from paint.train.loop import fit
from paint.utils import append_jsonl, write_json_atomic
from paint.world.corpus import GENERATOR_VERSION, corpus_batch
from paint.world.tasks import world_task


def clip_loss(model: "torch.nn.Module", batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over a batch of (image, caption) pairs; i-th image <-> i-th text."""

    img = F.normalize(clip_family.image_features(model, batch["pixel_values"]), dim=-1)  # (B, D)
    txt = F.normalize(clip_family.text_features(model, batch["input_ids"], batch["attention_mask"]), dim=-1)  # (B, D)
    scale = model.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()
    logits = scale * img @ txt.t()  # (B, B): images x texts
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def siglip_loss(model: "torch.nn.Module", batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (:func:`paint.models.siglip.sigmoid_loss`); i-th image <-> i-th text."""

    img = siglip_family.image_features(model, batch["pixel_values"])  # (B, D)
    txt = siglip_family.text_features(model, batch["input_ids"], batch.get("attention_mask"))  # (B, D)
    return siglip_family.sigmoid_loss(img, txt, model.logit_scale, model.logit_bias)


LOSSES = {"clip": clip_loss, "siglip": siglip_loss}


class CorpusBatches(torch.utils.data.Dataset):
    """Batch ``s`` of epoch ``e`` = corpus pairs of global step ``e * steps_per_epoch + s``."""

    def __init__(self, cfg: PretrainConfig, tokenizer, epoch: int, max_len: int):
        self.cfg, self.tokenizer, self.epoch, self.max_len = cfg, tokenizer, epoch, max_len

    def __len__(self) -> int:
        return self.cfg.steps_per_epoch

    def __getitem__(self, s: int) -> dict[str, torch.Tensor]:

        step = self.epoch * self.cfg.steps_per_epoch + s
        images, texts = corpus_batch(self.cfg.seed, step * self.cfg.batch_size, self.cfg.batch_size)
        # CLIP: pad to the batch's longest caption (~15 tokens), not the maximum: the text tower's
        # cost halves. SigLIP pools the last position, so it trains (and is read) at the maximum.
        enc = FAMILIES[self.cfg.family].tokenize(self.tokenizer, texts, self.max_len)
        return {"pixel_values": normalize(torch.from_numpy(images), self.cfg.image_mean, self.cfg.image_std), **enc}


def _first(batch: list) -> Any:
    return batch[0]


def zero_shot(
    model: "torch.nn.Module",
    tokenizer,
    processor,
    tasks: list[str],
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Zero-shot accuracy (percent) of a model on world tasks' splits (first ``limit`` images)."""

    bundle = ClipBundle(model=model, tokenizer=tokenizer, processor=processor, source="in-memory")
    out = {}
    for name in tasks:
        task = world_task(name, seed=seed)
        data = task.split(split)
        if limit is not None and limit < len(data):
            data = SubsetSplit(data, np.arange(limit), f"{data.identity}/first{limit}")
        images = preprocess_split(data, bundle.spec)
        head = build_head(bundle, task.classnames, task.templates)
        out[name] = 100.0 * evaluate_split(model, head, images, data.labels, bundle.spec)["accuracy"]
    return out


def pretrain_fingerprint(cfg: PretrainConfig) -> str:

    # the whole config (threads and workers too: RunDir's resume check lets those change)
    return run_fingerprint("pretrain-v1", None, GENERATOR_VERSION, cfg.model_dump_json())[:32]


def finish_pretraining(
    cfg: PretrainConfig, model: Any, tokenizer: Any, processor: Any, out: Path, result: Any, fp: str, t0: float
) -> dict[str, Any]:
    """Export the final model and write ``results.json`` (rank 0 alone under accelerate launch)."""

    proc = PartialState()
    final = {
        "steps": result.steps,
        "images_seen": result.steps * cfg.batch_size * proc.num_processes,  # batch_size is per process
        "wall_s_this_session": round(time.time() - t0, 1),
        "resumed_from_epoch": result.resumed_from_epoch,
        "history": result.history,
        "runtime": result.runtime,
        "fingerprint": fp,
        "model_dir": str(out / "model"),
    }
    if proc.is_main_process:
        export_hf(model, tokenizer, processor, out / "model")
        write_json_atomic(out / "results.json", final)
    proc.wait_for_everyone()
    return final


def epoch_record(
    cfg: PretrainConfig, m: "torch.nn.Module", tokenizer: Any, processor: Any, t0: float
) -> dict[str, Any]:
    """What the log records at an epoch end: wall time, temperature (and SigLIP's bias), zero-shot validation accuracy."""
    record: dict[str, Any] = {"wall_s": round(time.time() - t0, 1), "logit_scale": float(m.logit_scale.detach().exp())}
    if cfg.family == "siglip":
        record["logit_bias"] = float(m.logit_bias.detach())
    if cfg.eval_images and cfg.eval_tasks:
        accs = zero_shot(m, tokenizer, processor, cfg.eval_tasks, split="val", limit=cfg.eval_images)
        record.update({f"zs_val/{k}": round(v, 2) for k, v in accs.items()})
        record["zs_val/mean"] = round(float(np.mean(list(accs.values()))), 2)
    return record


@run_scope
def pretrain(cfg: PretrainConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Pretrain a CLIP or a SigLIP on the world corpus; returns the final record (also in ``results.json``).

    Args:
        cfg: the run's settings.
        out_dir: where the checkpoint, exported model, config and logs go.
        resume: continue the checkpoint in ``out_dir`` (refused if the config differs).
    """

    out = Path(out_dir)
    if out.exists() and (out / "checkpoint").exists() and not resume:
        raise PaintError(f"{out} already holds a pretraining run; pass --resume to continue it or choose a new --out")
    RunDir(out, "results.json").start(cfg, resume, ignore=DEFAULT_IGNORED | {"threads", "num_workers"})

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    tokenizer = load_or_train_tokenizer(cfg, out)
    model = build_clip(cfg, tokenizer)
    processor = build_image_processor(cfg, model)
    max_len = int(model.config.text_config.max_position_embeddings)

    def make_loader(epoch: int) -> torch.utils.data.DataLoader:
        ds = CorpusBatches(cfg, tokenizer, epoch, max_len)
        return torch.utils.data.DataLoader(
            ds, batch_size=1, shuffle=False, collate_fn=_first, num_workers=cfg.num_workers
        )

    def on_epoch_end(epoch: int, m: "torch.nn.Module") -> dict[str, float]:
        export_hf(m, tokenizer, processor, out / "model")
        record = epoch_record(cfg, m, tokenizer, processor, t0)
        append_jsonl(out / "log.jsonl", {"epoch": epoch, **record})
        return record

    fp = pretrain_fingerprint(cfg)
    result = fit(
        model,
        [n for n, _ in model.named_parameters()],
        make_loader,
        LOSSES[cfg.family],
        cfg,
        checkpoint_dir=out,
        resume=resume,
        fingerprint=fp,
        desc="pretrain",
        on_epoch_end=on_epoch_end,
    )
    return finish_pretraining(cfg, model, tokenizer, processor, out, result, fp, t0)

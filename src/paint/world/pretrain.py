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

import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from paint.config import StrictModel
from paint.errors import PaintError
from paint.pipeline.rundir import DEFAULT_IGNORED, RunDir, run_scope
from paint.utils import append_jsonl, atomic_path, sha256_strings, write_json_atomic

LOGIT_SCALE_MAX = math.log(100.0)

DEFAULT_CLIP: dict[str, Any] = {
    "text_config": {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 32,
    },
    "vision_config": {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    },
    "projection_dim": 128,
}


class PretrainConfig(StrictModel):
    """Everything that determines a pretraining run (written next to its outputs)."""

    seed: int = 0
    family: Literal["clip", "siglip"] = "clip"  # siglip: SiglipModel + the sigmoid loss
    # The dual encoder's architecture (text_config, vision_config and, for CLIP, projection_dim).
    clip: dict[str, Any] = Field(default_factory=lambda: json.loads(json.dumps(DEFAULT_CLIP)))
    batch_size: int = Field(128, ge=2)
    steps_per_epoch: int = Field(250, ge=1)
    epochs: int = Field(24, ge=1)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(300, ge=0)
    grad_clip: float = 1.0
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16 on a CUDA GPU with bf16, else fp32
    cpu: bool = False
    tf32: bool | None = None  # TF32 matmuls on CUDA (None: on); ignored on a CPU
    gradient_checkpointing: bool = False
    compile: bool = False
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    tokenizer_captions: int = Field(20000, ge=1)  # corpus captions the tokenizer is trained on
    eval_tasks: list[str] = Field(default_factory=lambda: ["shapes", "colours", "rendered-digits", "backgrounds"])
    eval_images: int = Field(200, ge=0)  # per task, from its val split, after every epoch (0: skip)
    num_workers: int = Field(0, ge=0)  # DataLoader workers rendering batches in parallel
    threads: int | None = Field(None, ge=1)  # torch CPU threads (None: torch's default); 1 wins on a busy shared box


def _tokenizer_texts(cfg: PretrainConfig) -> list[str]:
    from paint.world import render as R
    from paint.world.corpus import WORDS, corpus_pair
    from paint.world.tasks import task_texts

    # The world's vocabulary is closed, so the first captions of the stream cover it; the task
    # prompts and word lists are added so no class name or template word maps to <unk>.
    texts = [corpus_pair(cfg.seed, i).caption for i in range(cfg.tokenizer_captions)]
    texts += task_texts()
    texts.append(" ".join(WORDS + R.COUNT_WORDS + tuple(str(i) for i in range(11))))
    return texts


def load_or_train_tokenizer(cfg: PretrainConfig, out_dir: Path):
    """The run's tokenizer: read from ``out_dir/tokenizer`` if there, else trained and saved."""
    from transformers import PreTrainedTokenizerFast

    from paint.world.tokenizer import train_tokenizer

    path = out_dir / "tokenizer"
    max_len = int(cfg.clip.get("text_config", {}).get("max_position_embeddings", 32))
    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    tok = train_tokenizer(_tokenizer_texts(cfg), model_max_length=max_len)
    with atomic_path(path) as tmp:
        tok.save_pretrained(str(tmp))
    return tok


def build_clip(cfg: PretrainConfig, tokenizer) -> "torch.nn.Module":
    """A freshly initialised ``CLIPModel`` (or ``SiglipModel``) whose text side matches ``tokenizer``'s ids."""
    from transformers import CLIPConfig, CLIPModel

    if cfg.family == "siglip":
        return build_siglip(cfg, tokenizer)
    spec = json.loads(json.dumps(cfg.clip))
    text = dict(spec.pop("text_config", {}))
    text.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # pooling reads the first eos; it must not be 2
    )
    if tokenizer.eos_token_id == 2:
        raise PaintError("the tokenizer's eos id is 2, which transformers' CLIP treats as legacy pooling")
    vision = dict(spec.pop("vision_config", {}))
    try:
        config = CLIPConfig(text_config=text, vision_config=vision, **spec)
    except (TypeError, ValueError) as e:
        raise PaintError(f"invalid clip config: {e}") from None
    torch.manual_seed(cfg.seed)
    return CLIPModel(config)


def build_siglip(cfg: PretrainConfig, tokenizer) -> "torch.nn.Module":
    """A freshly initialised ``SiglipModel`` whose text side matches ``tokenizer``'s ids.

    The text tower's output (``projection_size``) defaults to the image tower's width, which is
    the image embedding's size (SigLIP has no image projection).
    """
    from transformers import SiglipConfig, SiglipModel

    from paint.models.siglip import init_logit_parameters

    spec = json.loads(json.dumps(cfg.clip))
    vision = dict(spec.pop("vision_config", {}))
    text = dict(spec.pop("text_config", {}))
    text.setdefault("projection_size", int(vision.get("hidden_size", 768)))
    text.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    try:
        config = SiglipConfig(text_config=text, vision_config=vision, **spec)
    except (TypeError, ValueError) as e:
        raise PaintError(f"invalid siglip config: {e}") from None
    torch.manual_seed(cfg.seed)
    model = SiglipModel(config)
    init_logit_parameters(model)
    return model


def build_image_processor(cfg: PretrainConfig, model: "torch.nn.Module"):
    """The PIL-backed CLIP image processor for the model's image size and the config's mean/std.

    transformers 5's default ``CLIPImageProcessor`` needs torchvision (absent here); its PIL
    twin gives the same pixels and loads everywhere.
    """
    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # older transformers: the default class is the PIL one
        from transformers import CLIPImageProcessor

    size = int(model.config.vision_config.image_size)
    if cfg.family == "siglip":  # SigLIP's processor: a square resize, no crop (same pixels on square images)
        from paint.models.siglip import image_processor_class

        return image_processor_class()(
            do_resize=True,
            size={"height": size, "width": size},
            resample=3,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(cfg.image_mean),
            image_std=list(cfg.image_std),
            do_convert_rgb=True,
        )
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        resample=3,  # bicubic, as paint.data.preprocess.clip_transform
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
        do_convert_rgb=True,
    )


def export_hf(model: "torch.nn.Module", tokenizer, processor, out: Path) -> Path:
    """Write a standard HF CLIP checkpoint (safetensors + tokenizer + processors) atomically.

    Both ``preprocessor_config.json`` (image processor) and ``processor_config.json``
    (``CLIPProcessor``) are written; both name the PIL image processor so that
    ``AutoImageProcessor``/``AutoProcessor``/the zero-shot pipeline need no torchvision.
    """
    import transformers

    from paint.models.families import family_of

    family = family_of(model)
    if family.name == "clip":
        with torch.no_grad():
            model.logit_scale.clamp_(max=LOGIT_SCALE_MAX)
    with atomic_path(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        joint = getattr(transformers, family.processor_class)
        joint(image_processor=processor, tokenizer=tokenizer).save_pretrained(str(tmp))
    return out


def clip_loss(model: "torch.nn.Module", batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over a batch of (image, caption) pairs; i-th image <-> i-th text."""
    from paint.models.clip import image_features, text_features

    img = F.normalize(image_features(model, batch["pixel_values"]), dim=-1)  # (B, D)
    txt = F.normalize(text_features(model, batch["input_ids"], batch["attention_mask"]), dim=-1)  # (B, D)
    scale = model.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()
    logits = scale * img @ txt.t()  # (B, B): images x texts
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def siglip_loss(model: "torch.nn.Module", batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (:func:`paint.models.siglip.sigmoid_loss`); i-th image <-> i-th text."""
    from paint.models.siglip import image_features, sigmoid_loss, text_features

    img = image_features(model, batch["pixel_values"])  # (B, D)
    txt = text_features(model, batch["input_ids"], batch.get("attention_mask"))  # (B, D)
    return sigmoid_loss(img, txt, model.logit_scale, model.logit_bias)


LOSSES = {"clip": clip_loss, "siglip": siglip_loss}


class CorpusBatches(torch.utils.data.Dataset):
    """Batch ``s`` of epoch ``e`` = corpus pairs of global step ``e * steps_per_epoch + s``."""

    def __init__(self, cfg: PretrainConfig, tokenizer, epoch: int, max_len: int):
        self.cfg, self.tokenizer, self.epoch, self.max_len = cfg, tokenizer, epoch, max_len

    def __len__(self) -> int:
        return self.cfg.steps_per_epoch

    def __getitem__(self, s: int) -> dict[str, torch.Tensor]:
        from paint.data.preprocess import normalize
        from paint.models.families import FAMILIES
        from paint.world.corpus import corpus_batch

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
    from paint.data.preprocess import preprocess_split
    from paint.data.task import SubsetSplit
    from paint.evaluation.results import evaluate_split
    from paint.models.clip import ClipBundle
    from paint.models.heads import build_head
    from paint.world.tasks import world_task

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


def run_fingerprint(cfg: PretrainConfig) -> str:
    from paint.world.corpus import GENERATOR_VERSION

    return sha256_strings(["pretrain-v1", GENERATOR_VERSION, cfg.model_dump_json()])[:32]


def finish_pretraining(
    cfg: PretrainConfig, model: Any, tokenizer: Any, processor: Any, out: Path, result: Any, fp: str, t0: float
) -> dict[str, Any]:
    """Export the final model and write ``results.json`` (rank 0 alone under accelerate launch)."""
    from accelerate import PartialState

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
    from paint.train.loop import LoopConfig, fit

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
    loop_cfg = LoopConfig.from_settings(cfg)

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

    fp = run_fingerprint(cfg)
    result = fit(
        model,
        [n for n, _ in model.named_parameters()],
        make_loader,
        LOSSES[cfg.family],
        loop_cfg,
        checkpoint_dir=out,
        resume=resume,
        fingerprint=fp,
        desc="pretrain",
        on_epoch_end=on_epoch_end,
    )
    return finish_pretraining(cfg, model, tokenizer, processor, out, result, fp, t0)

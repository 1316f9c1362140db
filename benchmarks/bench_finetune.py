"""paint's fine-tuning and evaluation throughput against plain PyTorch loops doing the same work (issue 16).

Fine-tuning: :func:`paint.train.finetune.finetune` with the default ``frozen-head`` recipe and
``max_steps`` (Accelerate, AdamW with decay on matrices only, warmup-cosine schedule, grad clipping
1.0, non-finite check, progress, loss history) against a bare loop over the same uint8 batches:
per-batch normalisation, the frozen head's cross-entropy, AdamW with the same two parameter groups
(:func:`paint.train.optim.make_optimizer`), the same schedule and clipping. Each run starts from its own
copy of the same model; paint and plain runs alternate (paint, plain, paint, ...) so a change in
machine load hits both alike. A run's time includes its setup (optimiser, accelerator, loader), not
the model copy. Evaluation: :func:`paint.evaluation.results.predict` against a bare
``get_image_features`` loop on the same images.

    PYTHONPATH=src python benchmarks/bench_finetune.py --threads 1 --steps 15 --batch 128 --repeats 3
    PYTHONPATH=src python benchmarks/bench_finetune.py --vit-b32 --batch 4 --steps 2 --repeats 2   # CPU: tiny
    PYTHONPATH=src python benchmarks/bench_finetune.py --arch l14 --device cuda --precision fp32,bf16,bf16-ckpt
    PYTHONPATH=src python benchmarks/bench_finetune.py --arch tiny --precision fp32,bf16,bf16-ckpt,bf16-compile \
        --batch 8 --steps 2 --repeats 1    # CPU dry run of every code path gpu_check.sh uses (seconds)

``--arch b32`` / ``l14`` build a random full-size ViT-B/32 or ViT-L/14 CLIP at 224 px (no download);
the throughput of a random model is that of the pretrained one (same shapes, same kernels);
``tiny`` is a 2-layer, width-32 CLIP at 32 px for dry runs.
``--precision`` is a comma-separated list of variants, each timed in turn on the same model:
``fp32`` (``mixed_precision: no``), ``bf16``, ``bf16-ckpt`` (bf16 + ``gradient_checkpointing``),
``bf16-compile`` (bf16 + ``compile``; each run's time includes its compile, as a real fine-tune's
does, so use more ``--steps`` to see the compiled speed). On CUDA both loops use TF32 for fp32 matmuls, paint's default
(``tf32: null``); the plain loop sets the same flags and checkpointing the same way.
On a CUDA device the peak GPU memory of each run is reported too; it includes the resident source
model that every run copies (4 bytes a parameter in fp32), as a real run would not.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = 10
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_model(arch: str, source: str) -> tuple[torch.nn.Module, object]:
    """(CLIPModel, ImageSpec): the shipped/local model, or a random full-size ViT-B/32 or ViT-L/14 at 224 px."""
    from paint.data.preprocess import ImageSpec

    if arch == "paint":
        from paint.models.clip import load_clip

        bundle = load_clip(source)
        return bundle.model, bundle.spec
    from transformers import CLIPConfig, CLIPModel

    if arch == "tiny":
        config = CLIPConfig(
            text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "patch_size": 8,
                "image_size": 32,
            },
            projection_dim=16,
        )
    elif arch == "b32":
        config = CLIPConfig()  # transformers' default: ViT-B/32 image tower, 224 px, 512-d projection
    else:  # l14: the openai/clip-vit-large-patch14 shapes
        config = CLIPConfig(
            text_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
            vision_config={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_attention_heads": 16,
                "num_hidden_layers": 24,
                "patch_size": 14,
                "image_size": 224,
            },
            projection_dim=768,
        )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    size = config.vision_config.image_size
    return model, ImageSpec(size, size, OPENAI_MEAN, OPENAI_STD)


# variant -> (mixed_precision, gradient_checkpointing, compile)
VARIANTS = {
    "fp32": ("no", False, False),
    "bf16": ("bf16", False, False),
    "bf16-ckpt": ("bf16", True, False),
    "bf16-compile": ("bf16", False, True),
}


def _image_features(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``model.get_image_features`` as a tensor (B, D): recent transformers return an output object."""
    out = model.get_image_features(pixel_values=pixels)
    return out if torch.is_tensor(out) else out.pooler_output


def plain_finetune(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    head: torch.Tensor,
    spec,
    batch: int,
    steps: int,
    device: str,
    variant: str,
) -> dict:
    """The same optimisation as paint's frozen-head recipe, written as a bare PyTorch loop."""
    from torch.utils.data import DataLoader, TensorDataset

    from paint.data.preprocess import normalize
    from paint.train.optim import make_optimizer, warmup_cosine
    from paint.train.speed import resolve_tf32, set_checkpointing, tf32_scope

    precision, checkpointing, compiled = VARIANTS[variant]

    names = [n for n, _ in model.named_parameters() if n.startswith(("vision_model.", "visual_projection."))]
    wanted = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in wanted)
    trainable = [(n, p) for n, p in model.named_parameters() if n in wanted]
    opt = make_optimizer(trainable, lr=1e-5, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(500, steps))
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch, shuffle=True, generator=g)
    params = [p for _, p in trainable]
    head = head.to(device)
    model.train()
    if checkpointing:
        set_checkpointing(model, True)  # transformers' non-reentrant activation checkpointing
    features = torch.compile(_image_features) if compiled else _image_features
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")
    with tf32_scope(resolve_tf32(None, device) if device == "cuda" else None):
        for i, (x, y) in enumerate(loader):
            if i >= steps:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                pixels = normalize(x, spec.mean, spec.std)
                feats = F.normalize(features(model, pixels).float(), dim=-1)
                loss = F.cross_entropy(feats @ head.t(), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    if checkpointing:
        set_checkpointing(model, False)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return {"loss": float(loss.detach())}


def paint_finetune(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    head: torch.Tensor,
    spec,
    batch: int,
    steps: int,
    device: str,
    variant: str,
) -> dict:
    """paint's fine-tuning entry point, default recipe, stopping after ``steps`` optimizer steps; its runtime record."""
    from paint.train.finetune import FinetuneConfig, TrainingSet, finetune

    precision, checkpointing, compiled = VARIANTS[variant]
    cfg = FinetuneConfig(
        epochs=1,
        batch_size=batch,
        max_steps=steps,
        cpu=device == "cpu",
        mixed_precision=precision,
        gradient_checkpointing=checkpointing,
        compile=compiled,
    )
    res = finetune(model, [TrainingSet("bench", images, labels.numpy(), head)], spec, cfg)
    return {"loss": res.history[-1]["loss"], "runtime": res.runtime}


def plain_predict(model: torch.nn.Module, head: torch.Tensor, images: torch.Tensor, spec, batch: int) -> torch.Tensor:
    """Zero-shot logits with nothing but ``get_image_features``."""
    from paint.data.preprocess import normalize

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = normalize(images[i : i + batch].to(device), spec.mean, spec.std)
            feats = F.normalize(_image_features(model, x).float(), dim=-1)
            out.append((feats @ head.t().to(device)).cpu())
    return torch.cat(out)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> tuple[float, float, object]:
    """(seconds, peak GPU GiB or nan, the call's return value) of one call."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t = time.perf_counter()
    value = fn()
    _sync(device)
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return dt, peak, value


def summary(label: str, rates: list[float], peaks: list[float]) -> str:
    mem = f", peak {max(peaks):.2f} GiB" if peaks and not np.isnan(peaks[0]) else ""
    return f"{label:<14} {statistics.median(rates):9.1f} img/s (min {min(rates):.1f}, max {max(rates):.1f}){mem}"


def finetune_rows(model, images, labels, head, spec, args, variant: str, paint_images=None) -> dict:
    """paint and plain alternating, one warm-up pair then ``repeats`` timed pairs: img/s, peaks, ratios.

    ``paint_images`` (the same images as a cache file's memory map, ``--from-cache``) replaces
    ``images`` for paint only: paint then reads its batches from disk as a real run does, while the
    plain loop keeps the in-memory tensor, the fastest case.
    """
    n = len(images)
    runners = {"paint": paint_finetune, "plain": plain_finetune}
    rates: dict[str, list[float]] = {k: [] for k in runners}
    peaks: dict[str, list[float]] = {k: [] for k in runners}
    last: dict[str, object] = {}
    for r in range(args.repeats + 1):  # round 0 warms up both (allocator, kernels, imports, compile)
        for name, run in runners.items():
            data = paint_images if name == "paint" and paint_images is not None else images
            job = functools.partial(
                run, copy.deepcopy(model), data, labels, head, spec, args.batch, args.steps, args.device, variant
            )
            if VARIANTS[variant][2]:
                # Each run compiles from a cold dynamo cache, as a fresh fine-tune does (paint compiles per
                # run; the plain loop's compiled function would otherwise be reused): time includes compiling.
                torch._dynamo.reset()
            dt, peak, last[name] = timed(job, args.device)
            del job  # free this run's model copy (and its optimizer state) before the next one
            if r > 0:
                rates[name].append(n / dt)
                peaks[name].append(peak)
    ratios = [a / b for a, b in zip(rates["paint"], rates["plain"])]
    print(f"fine-tune [{variant}]: paint ran {last['paint']['runtime']}")
    for name in runners:
        print("  " + summary(name, rates[name], peaks[name]))
    print(f"  paint/plain    {statistics.median(ratios):9.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    losses = {k: v["loss"] for k, v in last.items()}
    return {
        "finetune": rates,
        "finetune_peak_gib": peaks,
        "finetune_ratio": ratios,
        "final_loss": losses,
        "runtime": last["paint"]["runtime"],
    }


def eval_rows(model, images, head, spec, args, variant: str) -> dict:
    """paint's ``predict`` against a bare ``get_image_features`` loop: img/s and peaks (autocast for bf16)."""
    from paint.evaluation.results import predict
    from paint.train.speed import resolve_tf32, tf32_scope

    n = len(images)
    ev_n = args.eval_images or n
    ev_images = images[:ev_n] if ev_n <= n else images.repeat((ev_n + n - 1) // n, 1, 1, 1)[:ev_n]
    ev_batch = 2 * args.batch
    bf16 = VARIANTS[variant][0] == "bf16"
    tf32 = resolve_tf32(None, args.device) if args.device == "cuda" else None  # as in training
    evals = {
        "paint": lambda: predict(model, head, ev_images, spec, batch_size=ev_batch),
        "plain": lambda: plain_predict(model, head, ev_images, spec, ev_batch),
    }
    ev_rates: dict[str, list[float]] = {k: [] for k in evals}
    ev_peaks: dict[str, list[float]] = {k: [] for k in evals}
    for r in range(args.repeats + 1):
        for name, fn in evals.items():
            with torch.autocast(args.device, dtype=torch.bfloat16, enabled=bf16), tf32_scope(tf32):
                dt, peak, _ = timed(fn, args.device)
            if r > 0:
                ev_rates[name].append(ev_n / dt)
                ev_peaks[name].append(peak)
    ev_ratios = [a / b for a, b in zip(ev_rates["paint"], ev_rates["plain"])]
    print(f"eval [{variant}] ({ev_n} images, batch {ev_batch}):")
    for name in evals:
        print("  " + summary(name, ev_rates[name], ev_peaks[name]))
    print(f"  paint/plain    {statistics.median(ev_ratios):9.3f} (min {min(ev_ratios):.3f}, max {max(ev_ratios):.3f})")
    return {"eval": ev_rates, "eval_peak_gib": ev_peaks, "eval_ratio": ev_ratios}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="paint:default", help="shipped name or local CLIP directory (--arch paint)")
    ap.add_argument("--arch", choices=["paint", "tiny", "b32", "l14"], default="paint")
    ap.add_argument("--vit-b32", action="store_true", help="same as --arch b32")
    ap.add_argument("--steps", type=int, default=15, help="optimizer steps per fine-tuning run")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="timed (paint, plain) pairs, after one warm-up pair")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", default="fp32", help=f"comma-separated variants: {', '.join(VARIANTS)}")
    ap.add_argument("--eval-images", type=int, default=None, help="images for the eval timing (default: steps*batch)")
    ap.add_argument("--eval-for", default="fp32,bf16", help="variants that also time evaluation (eval ignores ckpt)")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--from-cache", action="store_true", help="paint reads the images from a .npy cache file")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file (after every variant)")
    args = ap.parse_args(argv)
    arch = "b32" if args.vit_b32 else args.arch
    variants = [v.strip() for v in args.precision.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown --precision variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("PAINT_PROGRESS", "0")  # the bar's output is not what is measured; its updates still run

    t0 = time.perf_counter()
    with torch.device(args.device):  # initialise on the device: a random ViT-L/14 builds in seconds on a GPU
        model, spec = build_model(arch, args.model)
    model = model.to(args.device)
    dim = model.visual_projection.out_features
    gen = torch.Generator().manual_seed(0)
    n = args.batch * args.steps
    images = torch.randint(0, 256, (n, 3, spec.crop, spec.crop), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    head = 100.0 * F.normalize(torch.randn(CLASSES, dim, generator=gen), dim=-1)  # (C, D), carries the logit scale
    setup = (
        f"{args.model if arch == 'paint' else 'random ViT-' + arch.upper()} @ {spec.crop}px, device {args.device}, "
        f"batch {args.batch}, {args.steps} steps, threads {torch.get_num_threads()}, "
        f"load {os.getloadavg()[0]:.2f}, model {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"built in {time.perf_counter() - t0:.1f} s"
    )
    print(setup, flush=True)
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}", flush=True)

    paint_images = None
    if args.from_cache:
        import tempfile

        cache_file = Path(tempfile.mkdtemp(prefix="paint-bench-ft-")) / "images.npy"
        np.save(cache_file, images.numpy())
        paint_images = np.load(cache_file, mmap_mode="c")  # what preprocess_array hands a run
        setup += f", paint reads {cache_file}"
    out: dict = {"setup": setup, "variants": {}}
    eval_for = set(args.eval_for.split(","))
    for variant in variants:
        t = time.perf_counter()
        row = finetune_rows(model, images, labels, head, spec, args, variant, paint_images)
        if not args.skip_eval and variant in eval_for:
            row.update(eval_rows(model, images, head, spec, args, variant))
        row["wall_s"] = round(time.perf_counter() - t, 1)
        out["variants"][variant] = row
        print(f"  ({variant}: {row['wall_s']} s)", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()

"""Benchmark: an 11-alpha sweep with the preprocessing cache versus decoding every pass.

Writes a few thousand PNG/JPEG images of varied sizes, builds a small random CLIP
(transformers ``CLIPModel``) and two random state dicts for its vision tower, then for each
alpha interpolates the weights (``paint.weights.ops.interpolate``), loads them and evaluates
every image (``paint.evaluation.results.evaluate_split``):

  (a) decoding and preprocessing every image on every pass (no cache);
  (b) with ``preprocess_split(..., cache_dir=...)``: the first pass decodes and writes the
      memory-mapped uint8 cache, the other ten read it.

Both sweeps run in this one process, one after the other, and must give the same
accuracies. It also times the cache's integrity check (hashing every cached image against
its stored digest, done once per process when the cache is opened) against the first,
decoding pass; ``--verify-only`` measures just that, e.g. at ``--image-size 224``. torch runs on one thread by default (see ``--threads``). Prints both times and their ratio and writes ``results.json`` (config +
timings) into ``--out`` when given.

    nice -n 15 .venv/bin/python benchmarks/bench_preprocess_cache.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_images(folder: Path, n: int, n_classes: int, seed: int) -> None:
    """``n`` images in ``folder/<class>/``: PNG and JPEG alternating, 64-256 px, portrait and landscape."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % n_classes
        h, w = (int(v) for v in rng.integers(64, 257, size=2))
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * (c + 1)) % 256, (yy * 3) % 256, ((xx + yy) * 2) % 256], axis=-1)
        img = np.clip(img + rng.integers(-20, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)
        ext = "png" if i % 2 else "jpg"
        Image.fromarray(img).save(folder / f"class_{c}" / f"{i:05d}.{ext}", quality=90)


def small_clip(image_size: int, hidden: int, layers: int, patch: int, seed: int):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch,
        ),
        projection_dim=hidden,
    )
    return CLIPModel(cfg).eval()


def sweep(model, sd0, sd1, alphas, split, spec, head, cache_dir, batch_size) -> tuple[float, list[float]]:
    """Seconds for the whole sweep and the accuracy at each alpha."""
    from paint.data.preprocess import preprocess_split
    from paint.evaluation.results import evaluate_split
    from paint.weights.ops import interpolate

    accs = []
    t0 = time.perf_counter()
    for a in alphas:
        model.vision_model.load_state_dict(interpolate(sd0, sd1, float(a)))
        images = preprocess_split(split, spec, cache_dir=cache_dir)  # (N, 3, S, S) uint8
        accs.append(evaluate_split(model, head, images, split.labels, spec, batch_size)["accuracy"])
    return time.perf_counter() - t0, accs


def time_verify(cache_dir: Path, split, spec) -> float:
    """Seconds to check every cached image of ``split`` against its stored digest (what opening the cache does)."""
    from paint.data.image_cache import bad_rows, cache_path

    path = cache_path(cache_dir, split.identity, spec.resize, spec.crop)
    t0 = time.perf_counter()
    digests = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["row_digests"]
    if bad_rows(path, digests):
        raise SystemExit(f"{path}: a freshly built cache failed its own checksums")
    return time.perf_counter() - t0


def verify_only(split, spec, cache_dir: Path) -> dict:
    """Decode once into the cache, then time the verify; the two numbers the cache check is judged by."""
    from paint.data.preprocess import preprocess_split

    t0 = time.perf_counter()
    preprocess_split(split, spec, cache_dir=cache_dir)
    t_decode = time.perf_counter() - t0
    t_verify = time_verify(cache_dir, split, spec)
    print(
        f"decode {len(split)} images at {spec.crop} px into the cache: {t_decode:.1f}s; "
        f"verify them: {t_verify:.2f}s ({100 * t_verify / t_decode:.1f}% of decoding)"
    )
    return {"seconds_first_decode": round(t_decode, 3), "seconds_verify_cache": round(t_verify, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=3000)
    p.add_argument("--n-classes", type=int, default=10)
    p.add_argument("--alphas", type=int, default=11)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    # One thread by default: decoding is single-threaded, and on this shared 2-core machine
    # (a pretraining run beside it) two torch threads measured 3-10x slower, not faster.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verify-only", action="store_true", help="only time decoding once vs verifying the cache")
    p.add_argument("--out", default=None, help="folder for results.json (and the images/cache if --keep)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from paint.data.preprocess import ImageSpec
    from paint.data.readers import read_image_folder

    with tempfile.TemporaryDirectory(prefix="paint-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        write_images(tmp / "images", args.n_images, args.n_classes, args.seed)
        split = read_image_folder(tmp / "images").splits["all"]
        print(f"wrote and indexed {len(split)} images in {time.perf_counter() - t:.1f}s")
        if args.verify_only:
            spec = ImageSpec(args.image_size, args.image_size, (0.5,) * 3, (0.25,) * 3)
            print(json.dumps({"config": vars(args), **verify_only(split, spec, tmp / "cache")}))
            return 0

        model = small_clip(args.image_size, args.hidden, args.layers, args.patch, args.seed)
        sd0 = {k: v.clone() for k, v in model.vision_model.state_dict().items()}
        sd1 = {
            k: v.clone()
            for k, v in small_clip(args.image_size, args.hidden, args.layers, args.patch, args.seed + 1)
            .vision_model.state_dict()
            .items()
        }
        head = torch.nn.functional.normalize(torch.randn(args.n_classes, args.hidden), dim=-1) * 100.0  # (C, D)
        spec = ImageSpec(
            args.image_size, args.image_size, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
        )
        alphas = np.linspace(0.0, 1.0, args.alphas)

        t_decode, acc_decode = sweep(model, sd0, sd1, alphas, split, spec, head, None, args.batch_size)
        print(f"(a) decode every pass: {t_decode:.1f}s for {len(alphas)} alphas")
        t_cache, acc_cache = sweep(model, sd0, sd1, alphas, split, spec, head, tmp / "cache", args.batch_size)
        print(f"(b) with the cache:    {t_cache:.1f}s for {len(alphas)} alphas (first pass builds it)")
        if not np.allclose(acc_decode, acc_cache):
            raise SystemExit(f"accuracies differ between the two sweeps: {acc_decode} vs {acc_cache}")
        ratio = t_decode / t_cache
        print(f"speed-up with the cache: {ratio:.2f}x (goal >= 3x)")
        t_verify = time_verify(tmp / "cache", split, spec)
        print(f"verify the cache ({len(split)} images): {t_verify:.2f}s, once per process")
        result = {
            "config": vars(args),
            "seconds_decode_every_pass": round(t_decode, 3),
            "seconds_with_cache": round(t_cache, 3),
            "ratio": round(ratio, 3),
            "seconds_verify_cache": round(t_verify, 3),
            "accuracy_per_alpha": [round(a, 4) for a in acc_cache],
            "alphas": alphas.tolist(),
        }
        if args.out:
            from paint.utils import write_json_atomic

            write_json_atomic(Path(args.out) / "results.json", result)
        print(
            json.dumps(
                {
                    k: result[k]
                    for k in ("seconds_decode_every_pass", "seconds_with_cache", "ratio", "seconds_verify_cache")
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: the data path at real sizes (preprocessing with 1..N decoding workers; one epoch's memory).

``--part preprocess`` writes ``--images`` JPEGs of mixed sizes (sides 160-640 px, smooth random
colour fields plus noise, so files are photo-sized: about 45 KB each at quality 90) into a temp
dir (or ``--data-dir``, reused when it holds them), then times
``preprocess_split(split, spec, cache_dir=..., num_workers=k)`` at CLIP's 224 px (resize 224,
crop 224) into a fresh cache for every worker count k = 1, 2, ..., N (N: the cores), repeats
interleaved, and checks that every run wrote the same array bytes and row digests. It prints
images/s per worker count, the speed-up over one worker and the efficiency per worker (speed-up
/ k; on a shared machine other jobs take cores, so below 1 is expected), and the default,
automatic mode (``num_workers=None``: threads kept only if faster on the first images).

It then compares the two kinds of pool on the same work (decode, crop, hash every row; rows
handed back in index order): paint's thread pool (:func:`paint.data.parallel.ordered_map`) and a
fork-based process pool (``multiprocessing`` ``Pool.imap``, the function inherited at fork so
nothing is pickled but the rows coming back), at every worker count above 1. Last, small
rendered images (the synthetic world's 32 px ``shapes``), where threads lose to one thread and
the automatic mode should keep one.

``--part epoch`` measures the peak memory of one fine-tuning epoch on a large task: a cache of
``--epoch-images`` (default 50,000) 224 px images is written through paint's own cache code (the
file, its row checksums; a second run verifies and reuses it), then each mode trains one epoch in a
fresh process (peak RSS is a per-process high-water mark): ``streamed``, what paint does (batches
read from the cache file), and ``in-memory``, the former behaviour (the set copied into RAM first).
It prints the peak RSS above the model's own footprint, at a tenth of the size and at full size:
streamed should not grow with the task. The cache build's own peak is printed too.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py --images 5000
    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py --part epoch --cache-dir /tmp/epoch
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

# ------------------------------------------------------------------------------------------ data


def write_jpegs(folder: Path, n: int, min_side: int, max_side: int, seed: int) -> list[str]:
    """``n`` JPEGs with sides in [min_side, max_side]: a smooth colour field (a few random colours
    upsampled bicubically) plus mild noise, which compresses like a photo, not like noise or flat colour."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        cells = rng.integers(0, 256, size=(int(rng.integers(3, 12)), int(rng.integers(3, 12)), 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(cells).resize((w, h), Image.BICUBIC), dtype=np.int16)  # (H, W, 3)
        img = np.clip(base + rng.normal(0, 8, size=(h, w, 3)).astype(np.int16), 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        paths.append(str(path))
    return paths


def jpeg_folder(args: argparse.Namespace, tmp: Path) -> list[str]:
    """The benchmark's JPEGs: reused from ``--data-dir`` when it holds enough, else written."""
    folder = Path(args.data_dir) if args.data_dir else tmp / "images"
    have = sorted(str(p) for p in folder.glob("*.jpg")) if folder.is_dir() else []
    if len(have) >= args.images:
        print(f"using {args.images} JPEGs already in {folder}")
        return have[: args.images]
    t = time.perf_counter()
    paths = write_jpegs(folder, args.images, args.min_side, args.max_side, args.seed)
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    print(
        f"wrote {len(paths)} JPEGs ({mb:.0f} MB, {1e3 * mb / len(paths):.0f} KB each) in {time.perf_counter() - t:.0f}s"
    )
    return paths


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ---------------------------------------------------------------------------- the two kinds of pool

_FORKED: Callable | None = None  # the function a forked worker runs (inherited, never pickled)


def _call_forked(i: int):
    return _FORKED(i)


def fork_map(fn: Callable[[int], object], items: Iterable[int], workers: int, chunksize: int = 16) -> Iterator:
    """``fn(i)`` in order from a fork-based process pool (POSIX only); rows come back pickled."""
    global _FORKED
    _FORKED = fn
    with mp.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_call_forked, items, chunksize=chunksize)


def thread_map(fn: Callable[[int], object], items: Iterable[int], workers: int | None) -> Iterator:
    from paint.data.parallel import ordered_map

    return ordered_map(fn, items, workers)


def decode_all(split, spec, mapper: Callable, workers: int) -> tuple[float, float, str]:
    """Wall and CPU seconds to decode and hash every row into one array through ``mapper``; a digest of it."""
    from paint.data.image_cache import row_digest
    from paint.data.preprocess import decode_one

    def row(i: int) -> tuple[np.ndarray, str]:
        r = decode_one(split, spec, i)
        return r, row_digest(r)

    out = np.empty((len(split), 3, spec.crop, spec.crop), dtype=np.uint8)
    digests = [""] * len(split)
    t0, c0 = time.perf_counter(), cpu_seconds()
    for i, (r, d) in enumerate(mapper(row, range(len(split)), workers)):
        out[i], digests[i] = r, d
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return seconds, cpu, hashlib.sha256(out.tobytes() + "".join(digests).encode()).hexdigest()


# ---------------------------------------------------------------------------------- preprocessing


def figures(n: int, runs: list[tuple[float, float]]) -> dict:
    """img/s (median and best wall time), cores used (CPU / wall) and img per CPU-second of repeated runs.

    On a shared machine the median mixes in other jobs' load; the best run is the nearest to an idle
    machine, and img per CPU-second (the pool's own overhead) hardly depends on the load at all.
    """
    wall = statistics.median(w for w, _ in runs)
    cpu = statistics.median(c for _, c in runs)
    return {
        "img_per_s": round(n / wall, 1),
        "best_img_per_s": round(n / min(w for w, _ in runs), 1),
        "cores_used": round(cpu / wall, 2),
        "img_per_cpu_s": round(n / cpu, 1),
        "all_seconds": [round(w, 3) for w, _ in runs],
    }


def time_preprocess(split, spec, workers: int, cache_dir: Path) -> tuple[float, float, str]:
    """Wall and CPU seconds for ``preprocess_split`` into an empty cache; a digest of the .npy and its row digests."""
    from paint.data.image_cache import cache_path
    from paint.data.preprocess import preprocess_split

    t0, c0 = time.perf_counter(), cpu_seconds()
    preprocess_split(split, spec, cache_dir=cache_dir, num_workers=workers)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    path = cache_path(cache_dir, split.identity, spec.resize, spec.crop)
    meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    digest = hashlib.sha256(path.read_bytes() + "".join(meta["row_digests"]).encode()).hexdigest()
    path.unlink()  # keep the disk use to one array
    return seconds, cpu, digest


def bench_preprocess(args: argparse.Namespace) -> dict:
    """Preprocessing throughput per worker count, and threads against processes; returns the figures."""
    from paint.data.parallel import available_cores
    from paint.data.preprocess import ImageSpec
    from paint.data.task import FileSplit

    cores = available_cores()
    workers = [int(w) for w in args.workers.split(",")] if args.workers else list(range(1, cores + 1))
    spec = ImageSpec(args.size, args.size, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    with tempfile.TemporaryDirectory(prefix="paint-bench-data-") as tmp:
        tmp = Path(tmp)
        paths = jpeg_folder(args, tmp)
        split = FileSplit(tuple(paths), np.zeros(len(paths), dtype=np.int64), f"bench/jpegs-{len(paths)}")
        n = len(split)
        print(
            f"{n} images -> {spec.crop} px, workers {workers}, {args.repeats} repeats interleaved, {cores} cores, "
            f"load average {os.getloadavg()[0]:.2f} at start"
        )

        # (1) preprocess_split into the cache, the path every run takes
        counts: list[int | None] = [*workers, None]  # None: the default, automatic (threads kept if faster)
        runs: dict[int | None, list[tuple[float, float]]] = {k: [] for k in counts}
        digests: set[str] = set()
        for r in range(args.repeats):
            for k in counts if r % 2 == 0 else counts[::-1]:  # alternate the order, so drift hits all alike
                wall, cpu, d = time_preprocess(split, spec, k, tmp / "cache")
                runs[k].append((wall, cpu))
                digests.add(d)
        if len(digests) != 1:
            raise SystemExit(f"the cache differs between worker counts ({len(digests)} different arrays)")
        rows = [{"workers": k if k else "auto", **figures(n, runs[k])} for k in counts]
        base, best_base = rows[0]["img_per_s"], rows[0]["best_img_per_s"]
        print(f"\npreprocess_split(..., cache_dir, num_workers=k): median (best) of {args.repeats}")
        print(
            f"{'workers':>7} | {'img/s':>11} | {'vs 1':>13} | {'per worker':>11} | "
            f"{'cores used':>10} | {'img/CPU-s':>9}"
        )
        for row in rows:
            k, speed, best = row["workers"], row["img_per_s"], row["best_img_per_s"]
            up, best_up = speed / base, best / best_base
            per = f"{up / k:>4.2f} ({best_up / k:>4.2f})" if k != "auto" else "-"
            row |= {"speedup": round(up, 3), "best_speedup": round(best_up, 3)}
            row |= {"efficiency": round(up / k, 3)} if k != "auto" else {}
            print(
                f"{k:>7} | {speed:>4.0f} ({best:>4.0f}) | {up:>4.2f}x ({best_up:>4.2f}x) | {per:>11} | "
                f"{row['cores_used']:>10.2f} | {row['img_per_cpu_s']:>9.0f}"
            )
        print("arrays and row digests: identical for every worker count")

        # (2) threads vs fork-based processes, same work, same worker counts
        compare = []
        if args.no_processes or not hasattr(os, "fork"):
            print("\nthreads vs processes: skipped")
        else:
            many = [k for k in workers if k > 1] or [2]
            kinds = {"threads": thread_map, "processes": fork_map}
            timed: dict[tuple[str, int], list[tuple[float, float]]] = {(m, k): [] for m in kinds for k in many}
            seen: set[str] = set()
            for r in range(args.repeats):
                for k in many:
                    for m in kinds if r % 2 == 0 else list(kinds)[::-1]:
                        wall, cpu, d = decode_all(split, spec, kinds[m], k)
                        timed[m, k].append((wall, cpu))
                        seen.add(d)
            if len(seen) != 1:
                raise SystemExit("threads and processes decoded different arrays")
            print(f"\nthreads vs fork-based processes (decode + hash into one array): median (best) of {args.repeats}")
            print(f"{'workers':>7} | {'pool':>9} | {'img/s':>11} | {'cores used':>10} | {'img/CPU-s':>9}")
            for k in many:
                t, p = figures(n, timed["threads", k]), figures(n, timed["processes", k])
                for m, f in (("threads", t), ("processes", p)):
                    print(
                        f"{k:>7} | {m:>9} | {f['img_per_s']:>4.0f} ({f['best_img_per_s']:>4.0f}) | "
                        f"{f['cores_used']:>10.2f} | {f['img_per_cpu_s']:>9.0f}"
                    )
                ratio, best_ratio = t["img_per_s"] / p["img_per_s"], t["best_img_per_s"] / p["best_img_per_s"]
                print(f"{k:>7} | threads/processes: {ratio:.2f}x img/s ({best_ratio:.2f}x best)")
                compare.append(
                    {
                        "workers": k,
                        "threads": t,
                        "processes": p,
                        "ratio": round(ratio, 3),
                        "best_ratio": round(best_ratio, 3),
                    }
                )
            print("arrays: identical between threads and processes")

        # (3) small rendered images (mostly Python under the GIL): where the automatic mode keeps one thread
        world = rendered_world(args, workers)
    return {
        "images": n,
        "size": spec.crop,
        "cores": cores,
        "per_workers": rows,
        "threads_vs_processes": compare,
        "rendered_world": world,
        "load_average_end": round(os.getloadavg()[0], 2),
    }


def rendered_world(args: argparse.Namespace, workers: list[int]) -> list[dict]:
    """img/s of the synthetic world's ``shapes`` task at its model's 32 px: 1..N threads and automatic."""
    from paint.data.preprocess import ImageSpec
    from paint.world.tasks import world_task

    split = world_task("shapes", sizes={"val": args.world_images}).split("val")
    spec = ImageSpec(32, 32, (0.5,) * 3, (0.25,) * 3)
    counts: list[int | None] = [*workers, None]
    runs: dict[int | None, list[tuple[float, float]]] = {k: [] for k in counts}
    seen: set[str] = set()
    for r in range(args.repeats):
        for k in counts if r % 2 == 0 else counts[::-1]:
            wall, cpu, d = decode_all(split, spec, lambda fn, items, _, k=k: thread_map(fn, items, k), 0)
            runs[k].append((wall, cpu))
            seen.add(d)
    if len(seen) != 1:
        raise SystemExit("the rendered images differ between worker counts")
    print(
        f"\nrendered world images ({len(split)} x 32 px, shapes task; decode + hash): median (best) of {args.repeats}"
    )
    print(f"{'workers':>7} | {'img/s':>13} | {'cores used':>10}")
    out = []
    for k in counts:
        f = figures(len(split), runs[k])
        out.append({"workers": k if k else "auto", **f})
        print(
            f"{k if k else 'auto':>7} | {f['img_per_s']:>5.0f} ({f['best_img_per_s']:>5.0f}) | {f['cores_used']:>10.2f}"
        )
    return out


# ------------------------------------------------------------------------------ epoch memory

EPOCH_CROP = 224


def _rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def epoch_cache_path(cache_dir: Path, n: int) -> Path:
    from paint.data.image_cache import cache_path

    return cache_path(cache_dir, f"bench-data-epoch-{n}", EPOCH_CROP, EPOCH_CROP)


def build_child(cache_dir: str, n: int) -> dict:
    """Write (or verify) the epoch task's cache through paint's own cache code; this process's peak RSS."""
    from paint.data.image_cache import cached_images

    path = epoch_cache_path(Path(cache_dir), n)
    pattern = np.random.default_rng(0).integers(0, 256, (3, EPOCH_CROP, EPOCH_CROP + 64), dtype=np.uint8)

    def decode(i: int) -> np.ndarray:  # image i: one noise pattern shifted by i % 64 (cheap; rows differ)
        return pattern[:, :, i % 64 : i % 64 + EPOCH_CROP]

    baseline = _rss_mib("VmRSS")
    t0 = time.perf_counter()
    meta = {"identity": path.stem, "resize": EPOCH_CROP, "crop": EPOCH_CROP}
    cached_images(path, n, EPOCH_CROP, decode, meta, progress=False, num_workers=1)
    return {"n": n, "baseline_mib": baseline, "peak_mib": _rss_mib("VmHWM"), "seconds": time.perf_counter() - t0}


def epoch_child(mode: str, cache_dir: str, n: int, batch: int) -> dict:
    """One fine-tuning epoch over the cached task in this process; its peak RSS over the model's footprint.

    The model is a small random CLIP at 224 px (patch 32, width 64), so the epoch is about data, not
    compute. Its footprint (the baseline) is this process's RSS after building it and one warm-up
    fine-tune on one random batch. ``in-memory`` copies the set into RAM first, as paint did before
    (``torch.cat`` of the training images); ``streamed`` hands the cache's memory map to ``finetune``.
    """
    import torch
    import torch.nn.functional as F
    from transformers import CLIPConfig, CLIPModel

    from paint.data.image_cache import cached_images
    from paint.data.preprocess import ImageSpec
    from paint.train.finetune import FinetuneConfig, TrainingSet, finetune

    torch.manual_seed(0)
    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    vision = dict(small, image_size=EPOCH_CROP, patch_size=32)
    model = CLIPModel(CLIPConfig(text_config=small, vision_config=vision, projection_dim=64))
    spec = ImageSpec(EPOCH_CROP, EPOCH_CROP, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    head = 30.0 * F.normalize(torch.randn(10, 64), dim=-1)
    cfg = FinetuneConfig(epochs=1, batch_size=batch, warmup_steps=0, cpu=True)
    warm = torch.randint(0, 256, (batch, 3, EPOCH_CROP, EPOCH_CROP), dtype=torch.uint8)
    finetune(model, [TrainingSet("warm-up", warm, np.zeros(batch, dtype=np.int64), head)], spec, cfg)
    baseline = _rss_mib("VmRSS")
    t0 = time.perf_counter()
    path = epoch_cache_path(Path(cache_dir), n)
    meta = {"identity": path.stem, "resize": EPOCH_CROP, "crop": EPOCH_CROP}
    images = cached_images(path, n, EPOCH_CROP, lambda i: None, meta)  # opened and verified, as a run does
    data = torch.cat([torch.from_numpy(images)]) if mode == "in-memory" else images
    record = finetune(model, [TrainingSet("epoch", data, np.arange(n) % 10, head)], spec, cfg)
    return {
        "mode": mode,
        "n": n,
        "baseline_mib": baseline,
        "peak_mib": _rss_mib("VmHWM"),
        "steps": record.steps,
        "seconds": time.perf_counter() - t0,
    }


def run_child(*argv: str) -> dict:
    """This script's ``--child ...`` in a fresh process (its own peak-RSS counter); its JSON line."""
    import subprocess
    import sys

    env = dict(os.environ, PAINT_PROGRESS="0")
    out = subprocess.run(
        [sys.executable, __file__, "--child", *argv], check=True, capture_output=True, text=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_epoch_memory(args: argparse.Namespace) -> dict:
    """Peak RSS over the model of one epoch, streamed vs in memory, at a tenth of the size and at full size."""
    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="paint-bench-epoch-"))
    sizes = sorted({max(args.batch, args.epoch_images // 10), args.epoch_images})
    print(f"\none fine-tuning epoch at {EPOCH_CROP} px, batch {args.batch} (cache in {cache_dir}):", flush=True)
    print(f"  {'mode':<10} {'images':>7} {'cache GiB':>9} {'model MiB':>9} {'peak MiB':>9} {'above':>7} {'s':>6}")
    rows = []
    for n in sizes:
        built = run_child("build", str(cache_dir), str(n))
        gib = epoch_cache_path(cache_dir, n).stat().st_size / 2**30
        print(
            f"  {'cache':<10} {n:>7} {gib:>9.2f} {'-':>9} {built['peak_mib']:>9.0f} "
            f"{built['peak_mib'] - built['baseline_mib']:>7.0f} {built['seconds']:>6.1f}   (build or verify)",
            flush=True,
        )
        modes = ["streamed"] + (["in-memory"] if n == sizes[-1] or not args.skip_small_in_memory else [])
        for mode in modes:
            r = run_child("epoch", mode, str(cache_dir), str(n), str(args.batch))
            r["above_mib"] = r["peak_mib"] - r["baseline_mib"]
            rows.append({**r, "cache_gib": gib, "build": built})
            print(
                f"  {mode:<10} {n:>7} {gib:>9.2f} {r['baseline_mib']:>9.0f} {r['peak_mib']:>9.0f} "
                f"{r['above_mib']:>7.0f} {r['seconds']:>6.1f}",
                flush=True,
            )
    return {"epochs": rows}


# -------------------------------------------------------------------------------------------- main

PARTS: dict[str, Callable[[argparse.Namespace], dict]] = {"preprocess": bench_preprocess, "epoch": bench_epoch_memory}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["all", *PARTS], default="all", help="which section to run")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--min-side", type=int, default=160)
    p.add_argument("--max-side", type=int, default=640)
    p.add_argument("--size", type=int, default=224, help="resize and crop (CLIP ViT-B: 224)")
    p.add_argument("--workers", default=None, help="comma-separated worker counts (default: 1..cores)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-processes", action="store_true", help="skip the threads vs processes comparison")
    p.add_argument("--world-images", type=int, default=3000, help="rendered 32 px images for the last table")
    p.add_argument("--data-dir", default=None, help="where the JPEGs are written (and reused); default: a temp dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for results.json")
    p.add_argument("--epoch-images", type=int, default=50_000, help="images of the epoch-memory task (224 px)")
    p.add_argument("--batch", type=int, default=128, help="fine-tuning batch of the epoch-memory part")
    p.add_argument("--cache-dir", default=None, help="where the epoch task's cache goes (reused); default: a temp dir")
    p.add_argument("--skip-small-in-memory", action="store_true", help="in-memory epoch at full size only")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # internal: one measured run in a fresh process
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "build":
            out = build_child(rest[0], int(rest[1]))
        else:
            out = epoch_child(rest[0], rest[1], int(rest[2]), int(rest[3]))
        print(json.dumps(out))
        return 0

    results = {"config": vars(args)}
    for name, part in PARTS.items():
        if args.part in ("all", name):
            results[name] = part(args)
    if args.out:
        from paint.utils import write_json_atomic

        write_json_atomic(Path(args.out) / "results.json", results)
    print(json.dumps({k: v for k, v in results.items() if k != "config"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

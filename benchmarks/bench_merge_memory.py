"""Peak memory and wall time of ``paint merge`` for every method vs the naive load-everything merge.

Generates three random checkpoints (a base and two "fine-tuned" ones) with the real key
names and shapes of Hugging Face CLIP ViT-L/14 (about 1.7 GB each in fp32; ``--layout
vit-b16`` for 0.6 GB), written tensor by tensor so generation stays light, then merges in
fresh subprocesses:

- ``naive``: ``safetensors.torch.load_file`` both fine-tuned models, lerp every tensor at
  0.5, ``save_file`` (what a script without streaming does);
- ``METHOD``: :func:`paint.pipeline.merge.run_merge`, i.e. ``paint merge`` with its defaults (input
  hashes included), for every registered method: base plus the two fine-tuned models;
  ``linear (no hashes)`` is the same linear merge with ``hash_inputs: false``.

Peak resident memory comes from the OS twice: ``ru_maxrss`` of each child via ``os.wait4``
and the child's own ``VmHWM`` from ``/proc/self/status``. The parent stays small (stdlib
only; generation runs in a child too) because a child's ``ru_maxrss`` also counts the
parent's resident pages it shared between fork and exec. Before each run the page
cache's dirty pages are flushed (``os.sync``), so that no run pays for the writeback of
the previous one's output (on a slow disk that dominates the wall time). The naive and the streamed
linear outputs are compared tensor by tensor (they must be bit-identical). The goals:
every method's peak <= 25% of one checkpoint + 300 MB; linear no slower than naive.

Usage: ``OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python benchmarks/bench_merge_memory.py
[--repeats 2] [--layout vit-b16] [--methods linear ties] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHOD_SETTINGS = {  # weights, parameters
    "linear": ([0.5, 0.5], {}),
    "task_arithmetic": ([0.5, 0.5], {}),
    "ties": ([1.0, 1.0], {"density": 0.2}),
    "dare_task_arithmetic": ([0.5, 0.5], {"drop_rate": 0.5}),
    "dare_ties": ([1.0, 1.0], {"drop_rate": 0.5}),
    "model_stock": ([1.0, 1.0], {}),
}
NO_HASH = " (no hashes)"  # paint merge with hash_inputs: false: the merge's own cost
VMHWM = 'int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])'
CHILD = {
    "stream": f"""
import json, sys, time
from paint.pipeline.merge import MergeConfig, run_merge
t = time.perf_counter()
weights, params = json.loads(sys.argv[5]), json.loads(sys.argv[6])
method, hash_inputs = sys.argv[7].removesuffix(" (no hashes)"), not sys.argv[7].endswith(" (no hashes)")
cfg = MergeConfig(base=sys.argv[1], models=[{{"path": sys.argv[2], "weight": weights[0]}},
                  {{"path": sys.argv[3], "weight": weights[1]}}], method=method, parameters=params, output=sys.argv[4],
                  hash_inputs=hash_inputs)
run_merge(cfg, progress=False)
print(json.dumps({{"seconds": time.perf_counter() - t, "vmhwm_kb": {VMHWM}}}))
""",
    "naive": f"""
import json, sys, time, os
import torch
from safetensors.torch import load_file, save_file
t = time.perf_counter()
a = load_file(sys.argv[2] + "/model.safetensors")
b = load_file(sys.argv[3] + "/model.safetensors")
out = {{k: torch.lerp(a[k], b[k], 0.5) if a[k].is_floating_point() else a[k] for k in a}}
os.makedirs(sys.argv[4], exist_ok=True)
save_file(out, sys.argv[4] + "/model.safetensors", metadata={{"format": "pt"}})
print(json.dumps({{"seconds": time.perf_counter() - t, "vmhwm_kb": {VMHWM}}}))
""",
}
LAYOUTS = {  # CLIP vision / text sizes
    "vit-l14": ({"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                 "image_size": 224, "patch_size": 14}, 768, 768),
    "vit-b16": ({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "image_size": 224, "patch_size": 16}, 512, 512),
}  # fmt: skip


def clip_layout(name: str) -> dict:
    """Key -> TensorInfo of an HF CLIP checkpoint (e.g. openai/clip-vit-large-patch14), built on the meta device."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from paint.weights.io import TensorInfo

    vision, text_width, projection = LAYOUTS[name]
    config = CLIPConfig(
        text_config={"hidden_size": text_width, "intermediate_size": 4 * text_width, "num_hidden_layers": 12,
                     "num_attention_heads": text_width // 64, "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config=vision,
        projection_dim=projection,
    )  # fmt: skip
    with torch.device("meta"):
        model = CLIPModel(config)
    return {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def generate(paths: list[Path], layout: dict) -> None:
    """Write a random base and fine-tuned variants (base + small noise) tensor by tensor."""
    import torch

    from paint.weights.writer import ShardedWriter

    gen = torch.Generator().manual_seed(0)
    writers = []
    for p in paths:
        p.mkdir(parents=True)
        writers.append(ShardedWriter(p, layout, max_shard_bytes=1 << 40))  # one model.safetensors, as on the hub
    for key, info in layout.items():
        if not info.dtype.is_floating_point:
            t = torch.arange(info.numel, dtype=info.dtype).reshape(info.shape)
            for w in writers:
                w.write(key, t)
            continue
        base = torch.randn(info.shape, generator=gen, dtype=info.dtype) * 0.02
        writers[0].write(key, base)
        for w in writers[1:]:
            w.write(key, base + torch.randn(info.shape, generator=gen, dtype=info.dtype) * 0.002)
    for w in writers:
        w.close()


def run_child(mode: str, method: str, paths: list[Path], out: Path) -> dict:
    """Run one merge in a fresh interpreter; peak RSS from the kernel's rusage of that child."""
    weights, params = METHOD_SETTINGS[method.removesuffix(NO_HASH)]
    argv = [*map(str, paths), str(out), json.dumps(weights), json.dumps(params), method]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD[mode], *argv], stdout=subprocess.PIPE, env=env)
    stdout = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode} {method} merge failed with exit code {os.waitstatus_to_exitcode(status)}")
    inner = json.loads(stdout.decode().strip().splitlines()[-1])
    peak = max(usage.ru_maxrss / 1024, inner["vmhwm_kb"] / 1024)
    return {
        "name": "naive" if mode == "naive" else method,
        "peak_mb": peak,
        "wall_s": wall,
        "merge_s": inner["seconds"],
    }


def same_tensors(x: Path, y: Path) -> bool:
    """Bit-for-bit comparison of two checkpoints, one tensor at a time."""
    import torch

    from paint.weights.io import CheckpointReader

    rx, ry = CheckpointReader(x), CheckpointReader(y)
    return set(rx.keys()) == set(ry.keys()) and all(torch.equal(rx.get(k), ry.get(k)) for k in rx.keys())


def report(results: list[dict], size: int) -> bool:
    """Print the table; return whether every goal is met."""
    goal_mb = 0.25 * size / 2**20 + 300
    names = list(dict.fromkeys(r["name"] for r in results))
    peak = {n: max(r["peak_mb"] for r in results if r["name"] == n) for n in names}
    walls = {n: [r["wall_s"] for r in results if r["name"] == n] for n in names}
    print(f"\ncheckpoint {size / 2**20:.1f} MiB; memory goal {goal_mb:.1f} MiB\n")
    print(f"| {'merge':<22} | {'peak RSS (MiB)':>14} | {'wall (s)':<22} | memory goal |")
    print(f"|{'-' * 24}|{'-' * 15}:|{'-' * 24}|{'-' * 13}|")
    ok = True
    for n in names:
        met = n == "naive" or peak[n] <= goal_mb
        ok &= met
        wall = " / ".join(f"{w:.1f}" for w in walls[n])
        print(
            f"| {n:<22} | {peak[n]:>14,.0f} | {wall:<22} | {'-' if n == 'naive' else 'met' if met else 'NOT met':<11} |"
        )
    if "linear" in walls:
        faster = min(walls["linear"]) <= min(walls["naive"])
        ok &= faster
        print(f"\nlinear / naive best wall time: {min(walls['linear']) / min(walls['naive']):.3f} "
              f"({'met' if faster else 'NOT met'}: no slower than naive)")  # fmt: skip
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="where to put the temporary checkpoints (default: a new temp dir)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs of naive and linear")
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="vit-l14", help="checkpoint size (vit-b16: smaller)")
    ap.add_argument("--methods", nargs="+", default=list(METHOD_SETTINGS), help="methods to measure")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--generate", nargs=3, metavar=("BASE", "A", "B"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        generate([Path(p) for p in args.generate], clip_layout(args.layout))
        return 0

    work = Path(tempfile.mkdtemp(prefix="paint-bench-", dir=args.workdir))
    try:
        t = time.perf_counter()
        paths = [work / "base", work / "a", work / "b"]
        # generate in a child so that this process never holds torch or tensors (see the module docstring)
        subprocess.run([sys.executable, __file__, "--layout", args.layout, "--generate", *map(str, paths)], check=True)
        size = (paths[0] / "model.safetensors").stat().st_size
        print(f"generated 3 {args.layout} checkpoints, {size / 1e9:.3f} GB each, in {time.perf_counter() - t:.1f}s")
        results = []
        runs = [("naive", "linear"), ("stream", "linear"), ("stream", "linear" + NO_HASH)] * args.repeats
        runs += [("stream", m) for m in args.methods if m != "linear"]
        for mode, method in runs:
            out = work / f"out-{mode}-{method.replace(' ', '_')}"
            shutil.rmtree(out, ignore_errors=True)
            os.sync()  # start every run with no dirty pages: none pays for an earlier run's writeback
            res = run_child(mode, method, paths, out)
            results.append(res)
            print(
                f"{res['name']:>22}: peak RSS {res['peak_mb']:8.1f} MiB   wall {res['wall_s']:6.2f}s"
                f"   (after imports {res['merge_s']:6.2f}s)",
                flush=True,
            )
            if mode == "stream" and method != "linear":
                shutil.rmtree(out)  # keep disk use at four checkpoints
        identical = same_tensors(work / "out-naive-linear", work / "out-stream-linear")
        ok = report(results, size)
        print(f"naive and streamed linear outputs bit-identical: {identical}")
        return 0 if identical and ok else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

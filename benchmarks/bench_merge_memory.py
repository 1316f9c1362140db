"""Peak memory and wall time: streamed merge vs the naive load-everything merge, ViT-L/14 size.

Generates two random checkpoints with the real key names and shapes of Hugging Face CLIP
ViT-L/14 (about 1.7 GB each in fp32), written tensor by tensor so generation stays light,
then merges them (0.5 / 0.5 linear, i.e. PAINT at alpha 0.5) in fresh subprocesses:

- ``stream``: :func:`paint.weights.stream.merge_checkpoints` (one tensor or row chunk at a time);
- ``naive``: ``safetensors.torch.load_file`` both, lerp every tensor, ``save_file``.

Peak resident memory comes from the OS twice: ``ru_maxrss`` of each child via ``os.wait4``
and the child's own ``VmHWM`` from ``/proc/self/status``. The parent stays small (stdlib
only; generation runs in a child too) because a child's ``ru_maxrss`` also counts the
parent's resident pages it shared between fork and exec.
Both outputs are compared tensor by tensor (they must be bit-identical).

Usage: ``nice -n 15 .venv/bin/python benchmarks/bench_merge_memory.py [--repeats 2] [--workdir DIR]``
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

CHILD = {
    "stream": """
import json, sys, time
from paint.weights.stream import merge_checkpoints
t = time.perf_counter()
merge_checkpoints(sys.argv[1], [sys.argv[1], sys.argv[2]], sys.argv[3], method="linear", weights=[0.5, 0.5], progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "vmhwm_kb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])}))
""",
    "naive": """
import json, sys, time, os
import torch
from safetensors.torch import load_file, save_file
t = time.perf_counter()
a = load_file(sys.argv[1] + "/model.safetensors")
b = load_file(sys.argv[2] + "/model.safetensors")
out = {k: torch.lerp(a[k], b[k], 0.5) for k in a}
os.makedirs(sys.argv[3], exist_ok=True)
save_file(out, sys.argv[3] + "/model.safetensors", metadata={"format": "pt"})
print(json.dumps({"seconds": time.perf_counter() - t, "vmhwm_kb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])}))
""",
}


def vit_l14_layout() -> dict:
    """Key -> TensorInfo of HF CLIP ViT-L/14 (openai/clip-vit-large-patch14), built on the meta device."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from paint.weights.io import TensorInfo

    config = CLIPConfig(
        text_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                       "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
        projection_dim=768,
    )  # fmt: skip
    with torch.device("meta"):
        model = CLIPModel(config)
    return {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def generate(path: Path, layout: dict, seed: int) -> int:
    """Write a random checkpoint tensor by tensor; return its size in bytes."""
    import torch

    from paint.weights.io import ShardedWriter

    path.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    writer = ShardedWriter(path, layout, max_shard_bytes=1 << 40)  # one model.safetensors, as on the hub
    for key, info in layout.items():
        writer.write(key, torch.randn(info.shape, generator=gen, dtype=info.dtype) * 0.02)
    writer.close()
    return (path / "model.safetensors").stat().st_size


def run_child(mode: str, a: Path, b: Path, out: Path) -> dict:
    """Run one merge in a fresh interpreter; peak RSS from the kernel's rusage of that child."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD[mode], str(a), str(b), str(out)], stdout=subprocess.PIPE, env=env)
    stdout = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} merge failed with exit code {proc.returncode}")
    inner = json.loads(stdout.decode().strip().splitlines()[-1])
    return {
        "mode": mode,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "vmhwm_mb": inner["vmhwm_kb"] / 1024,
        "wall_s": wall,
        "merge_s": inner["seconds"],
    }


def same_tensors(x: Path, y: Path) -> bool:
    """Bit-for-bit comparison of two checkpoints, one tensor at a time."""
    import torch

    from paint.weights.io import CheckpointReader

    rx, ry = CheckpointReader(x), CheckpointReader(y)
    return set(rx.keys()) == set(ry.keys()) and all(torch.equal(rx.get(k), ry.get(k)) for k in rx.keys())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="where to put the temporary checkpoints (default: a new temp dir)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs of each mode")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--generate", nargs=2, metavar=("A", "B"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        layout = vit_l14_layout()
        for i, p in enumerate(args.generate):
            generate(Path(p), layout, i)
        return 0

    work = Path(tempfile.mkdtemp(prefix="paint-bench-", dir=args.workdir))
    try:
        t = time.perf_counter()
        a, b = work / "a", work / "b"
        # generate in a child so that this process never holds torch or tensors (see the module docstring)
        subprocess.run([sys.executable, __file__, "--generate", str(a), str(b)], check=True)
        size = (a / "model.safetensors").stat().st_size
        print(f"generated 2 checkpoints, {size / 1e9:.3f} GB each, in {time.perf_counter() - t:.1f}s")
        results = []
        for r in range(args.repeats):
            for mode in ("naive", "stream"):
                out = work / f"out-{mode}"
                shutil.rmtree(out, ignore_errors=True)
                res = run_child(mode, a, b, out)
                results.append(res)
                print(
                    f"run {r + 1} {mode:>6}: peak RSS {res['peak_rss_mb']:8.1f} MiB (VmHWM {res['vmhwm_mb']:8.1f})"
                    f"   wall {res['wall_s']:6.2f}s   (merge {res['merge_s']:.2f}s)"
                )
        identical = same_tensors(work / "out-naive", work / "out-stream")
        best = {m: min((x for x in results if x["mode"] == m), key=lambda x: x["wall_s"]) for m in ("naive", "stream")}
        peak = {m: max(max(x["peak_rss_mb"], x["vmhwm_mb"]) for x in results if x["mode"] == m) for m in ("naive", "stream")}
        goal_mb = 0.25 * size / 2**20 + 300
        print()
        print(f"{'':>8} {'peak RSS (MiB)':>14} {'best wall (s)':>14}")
        for m in ("naive", "stream"):
            print(f"{m:>8} {peak[m]:>14.1f} {best[m]['wall_s']:>14.2f}")
        print(f"{'ratio':>8} {peak['stream'] / peak['naive']:>14.3f} {best['stream']['wall_s'] / best['naive']['wall_s']:>14.3f}  (stream / naive)")
        print(f"checkpoint size {size / 2**20:.1f} MiB; memory goal {goal_mb:.1f} MiB: "
              f"{'met' if peak['stream'] <= goal_mb else 'NOT met'}; wall-time goal (stream <= naive): "
              f"{'met' if best['stream']['wall_s'] <= best['naive']['wall_s'] else 'NOT met'}")  # fmt: skip
        print(f"outputs bit-identical: {identical}")
        return 0 if identical else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

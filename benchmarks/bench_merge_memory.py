"""Peak memory and wall time of ``paint merge`` for every method vs the naive merge and the disk's own speed.

Generates three random checkpoints (a base and two "fine-tuned" ones) with the real key
names and shapes of Hugging Face CLIP ViT-L/14 (about 1.7 GB each in fp32; ``--layout
vit-b16`` for 0.6 GB), written tensor by tensor so generation stays light, then measures, each
in a fresh process that starts after :func:`settle` (dirty pages flushed, one plain write):

- the disk: ``cp`` of one checkpoint; a Python read of the three inputs and a write of one
  checkpoint's bytes; the IO floor of a two-model merge (read both models, write one output,
  no maths); sha256 of the three inputs on one thread (what ``hash_inputs`` costs in CPU);
- ``naive``: ``safetensors.torch.load_file`` both fine-tuned models, lerp every tensor at 0.5,
  ``save_file`` (what a script without streaming does); ``naive METHOD``: every input loaded whole,
  the method applied to whole tensors with plain torch (:data:`NAIVE`), saved;
- ``METHOD``: :func:`paint.pipeline.merge.run_merge`, i.e. ``paint merge`` with its defaults
  (input hashes included) and an empty hash cache of its own, for every registered method: base
  plus the two fine-tuned models; ``METHOD (hashes cached)`` the same with a cache filled once
  before the rounds (every input hashed by an earlier merge); ``linear (no hashes)`` is the same
  linear merge with ``hash_inputs: false``;
- ``regmean (merge step)``: RegMean needs data (each model's Gram matrices, gathered by forward
  passes on its task). Its merge step is measured with random Gram matrices for every linear
  layer of the image tower, written to a safetensors file per model and read one at a time
  (``merge_checkpoints`` with ``with_grams``; no input hashes);
- with ``--before-src DIR`` (a copy of ``src/`` from another commit), every fast method again
  with that code, interleaved, so that before and after are measured side by side.

Rounds of the fast methods alternate with the naive merge (``--repeats``; the best of each is
compared); the SVD merges and RegMean run once (minutes each). Peak resident memory is the
larger of each child's ``ru_maxrss`` (``os.wait4``) and its own ``VmHWM``; the parent stays
small (stdlib only) because a child's ``ru_maxrss`` also counts the parent's pages shared
between fork and exec. Every output is compared with its method's first streamed output (the
largest absolute difference; the streamed runs and the naive linear merge must be bit-identical).
The goals: every method's peak <= 25% of one checkpoint + 300 MB, and no slower than the naive
merge of the same method (the naive linear merge for a method without a naive twin).

Usage: ``OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python benchmarks/bench_merge_memory.py
[--repeats 3] [--layout vit-b16] [--methods linear ties] [--inputs DIR] [--before-src DIR]``
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
    "iso_c": ([1.0, 1.0], {}),
    "iso_cts": ([1.0, 1.0], {}),
    "tsv_m": ([1.0, 1.0], {}),
    "regmean": ([1.0, 1.0], {}),
}
SLOW = ("iso_c", "iso_cts", "tsv_m", "regmean")  # run once: compute-bound (SVDs, solves), minutes each
NO_HASH, WARM, BEFORE, REGMEAN = " (no hashes)", " (hashes cached)", " [before]", "regmean (merge step)"
SAFE = "model.safetensors"
WHY_NOT = {  # why a method cannot keep the memory or time goal, printed beside it
    "iso_c": "an SVD needs the whole matrix: N + 1 inputs, the task vectors and LAPACK's factors of the 49408 x 768 "
    "token embedding (145 MiB each) at once; compute-bound (one SVD per 2-D tensor)",
    "iso_cts": "as iso_c, plus one SVD per task and two polar factors per 2-D tensor",
    "tsv_m": "as iso_c, with one SVD per task and two polar factors per 2-D tensor",
    "regmean": "compute-bound: a float64 Cholesky solve per linear layer (4096 x 4096 for fc2), each solved whole "
    "from its N Gram matrices",
    "ties": "compute-bound: an exact radix select (two passes per model) and the sign election",
    "dare_ties": "compute-bound: a random draw per entry and model, an L1 pass, the sign election",
    "dare_task_arithmetic": "compute-bound: a random draw per entry and model, and an L1 pass",
    "model_stock": "compute-bound: float64 running sums of every pair of task vectors, exact whatever the chunking",
    "linear": "sha256 of the 3 inputs (the disk table's last row) shares the cores; cached, it costs nothing",
    "linear" + NO_HASH: "writing the output to the page cache (the disk table's Python write) and paint's imports",
    "task_arithmetic": "reads and hashes 3 inputs where the naive merge reads 2",
}
# What a script without streaming does: load every input whole, apply the method with plain torch on
# whole tensors, save. mergekit's semantics: a per-tensor top-k trim (the k-th largest magnitude by
# quickselect, ties at it kept), sign election by summed mass, the weighted disjoint mean; DARE's
# Bernoulli mask with its L1-norm rescale; Model Stock's mean pairwise cosine. The naive linear merge
# reads only the two fine-tuned models, as before.
NAIVE = """
def trim(d, density):  # the k-th largest magnitude by quickselect (half of torch.topk's time)
    mag = d.abs()
    k = max(int(density * d.numel()), 1)
    return d * (mag >= torch.kthvalue(mag.reshape(-1), d.numel() - k + 1).values)
def drop(d, rate, g):
    kept = d * (torch.rand(d.shape, generator=g) >= rate)
    n = kept.abs().sum()
    return kept * (d.abs().sum() / n) if n > 0 else kept
def elect(ds, ws, normalize):
    sign = torch.sign(sum(ds)); sign[sign == 0] = 1
    masks = [(torch.sign(d) == sign) & (d != 0) for d in ds]
    mixed = sum(d * m for d, m in zip(ds, masks))
    if not normalize:
        return mixed
    div = sum(w * m for w, m in zip(ws, masks)); div[div == 0] = 1
    return mixed / div
def merge(b, ms, key, g):
    if method == "linear":
        return torch.lerp(ms[0], ms[1], 0.5)
    ds = [m - b for m in ms]
    if method == "model_stock":
        flat = [d.reshape(-1).double() for d in ds]
        pairs = [(i, j) for i in range(len(flat)) for j in range(i + 1, len(flat))]
        cos = sum(float(flat[i] @ flat[j] / (flat[i].norm() * flat[j].norm()).clamp_min(1e-12)) for i, j in pairs) / len(pairs)
        n = len(ms); ratio = max(n * cos / (1 + (n - 1) * cos), 0.0)
        return (ratio * sum(ms) / n + (1 - ratio) * b).to(b.dtype)
    if method == "ties":
        ds = [trim(d, params.get("density", 0.2)) for d in ds]
    if method.startswith("dare"):
        ds = [drop(d, params.get("drop_rate", 0.5), g) for d in ds]
    ds = [w * d for w, d in zip(weights, ds)]
    if method in ("ties", "dare_ties"):
        return b + elect(ds, weights, method == "ties")
    return b + sum(ds)
method = "linear" if method == "naive" else method
names = sys.argv[2:4] if method == "linear" else sys.argv[1:4]
sds = [load_file(p + "/model.safetensors") for p in names]
base, models = (None, sds) if method == "linear" else (sds[0], sds[1:])
g = torch.Generator().manual_seed(0)
ref = models[0]
out = {k: merge(None if base is None else base[k], [m[k] for m in models], k, g) if ref[k].is_floating_point() else ref[k] for k in ref}
os.makedirs(sys.argv[4], exist_ok=True)
save_file(out, sys.argv[4] + "/model.safetensors", metadata={"format": "pt"})
"""
VMHWM = 'int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])'
CHILD = {
    "stream": f"""
import json, sys, time
from paint.pipeline.merge import MergeConfig, run_merge
t = time.perf_counter()
weights, params, method = json.loads(sys.argv[5]), json.loads(sys.argv[6]), sys.argv[7]
cfg = MergeConfig(base=sys.argv[1], models=[{{"path": sys.argv[2], "weight": weights[0]}},
                  {{"path": sys.argv[3], "weight": weights[1]}}], method=method.split(" ")[0], parameters=params,
                  output=sys.argv[4], hash_inputs="{NO_HASH}" not in method)
run_merge(cfg, progress=False)
print(json.dumps({{"seconds": time.perf_counter() - t, "vmhwm_kb": {VMHWM}}}))
""",
    "regmean": f"""
import json, sys, time
from paint.weights.io import CheckpointReader
from paint.weights.methods import get_method
from paint.weights.regmean import with_grams
from paint.weights.stream import merge_checkpoints
t = time.perf_counter()
grams = [CheckpointReader(p + "/grams.safetensors").as_mapping() for p in sys.argv[2:4]]  # read one at a time
merge_checkpoints(sys.argv[1], sys.argv[2:4], sys.argv[4], with_grams(get_method("regmean"), grams), progress=False)
print(json.dumps({{"seconds": time.perf_counter() - t, "vmhwm_kb": {VMHWM}}}))
""",
    "naive": f"""
import json, sys, time, os
import torch
from safetensors.torch import load_file, save_file
t = time.perf_counter()
method, (weights, params) = sys.argv[7].split(" ")[-1], (json.loads(sys.argv[5]), json.loads(sys.argv[6]))
{NAIVE}
print(json.dumps({{"seconds": time.perf_counter() - t, "vmhwm_kb": {VMHWM}}}))
""",
}
DISK = """
import hashlib, json, os, sys, time
mode, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
buf = bytearray(4 << 20); view = memoryview(buf)
def read(path, h=None):
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            if h: h.update(view[:n])
def write(nbytes):
    with open(out, "wb", buffering=0) as f:
        while nbytes > 0:
            nbytes -= f.write(view[: min(len(buf), nbytes)])
t = time.perf_counter()
if mode == "read":
    for p in files: read(p)
elif mode == "write":
    write(os.path.getsize(files[0]))
elif mode == "floor":
    for p in files: read(p)
    write(os.path.getsize(files[0]))
elif mode == "sha256":
    for p in files: read(p, hashlib.sha256())
print(json.dumps({"seconds": time.perf_counter() - t, "vmhwm_kb": 0}))
"""
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


def is_tower_linear(key: str) -> bool:
    """A linear layer of the image tower (the weights RegMean merges from Gram matrices)."""
    linear = key.endswith(("_proj.weight", "fc1.weight", "fc2.weight")) or key == "visual_projection.weight"
    return linear and key.startswith(("vision_model.", "visual_projection."))


def generate(paths: list[Path], layout: dict, grams: bool) -> None:
    """Write a random base and fine-tuned variants (base + small noise) tensor by tensor, and Gram matrices."""
    import torch

    from paint.weights.io import TensorInfo
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
    if not grams:
        return
    linears = {k: info.shape[1] for k, info in layout.items() if is_tower_linear(k)}
    for p in paths[1:]:  # X^T X of 64 random input directions, plus the identity: symmetric positive definite
        infos = {k: TensorInfo((n, n), torch.float32) for k, n in linears.items()}
        gw = ShardedWriter(p, infos, single_file=p / "grams.safetensors")
        for k, n in linears.items():
            x = torch.randn(64, n, generator=gen)
            gw.write(k, (x.T @ x).add_(torch.eye(n)))
        gw.close()


def run_child(mode: str, name: str, paths: list[Path], out: Path, src: str | None = None) -> dict:
    """Run one merge (or disk check) in a fresh interpreter; peak RSS from the kernel's rusage of that child."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PAINT_CACHE": str(cache_dir(name, out))}
    if src:
        env["PYTHONPATH"] = src
    if mode == "disk":
        argv = [sys.executable, "-c", DISK, name, str(out), *map(str, paths)]
    elif mode == "cp":
        argv = ["cp", str(paths[0]), str(out)]
    else:
        settings = [json.dumps(x) for x in METHOD_SETTINGS.get(method_of(name), ([], {}))]
        argv = [sys.executable, "-c", CHILD[mode], *map(str, paths), str(out), *settings, name]
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    stdout = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:  # the table says so; the other runs go on
        return {"peak_mb": usage.ru_maxrss / 1024, "wall_s": wall, "inner_s": wall, "failed": True}
    inner = json.loads(stdout.decode().strip().splitlines()[-1]) if mode != "cp" else {"seconds": wall, "vmhwm_kb": 0}
    peak = max(usage.ru_maxrss / 1024, inner["vmhwm_kb"] / 1024)
    return {"peak_mb": peak, "wall_s": wall, "inner_s": inner["seconds"]}


def method_of(name: str) -> str:
    """The merge method a run's name stands for (``naive`` alone is the naive linear merge)."""
    if name == "naive":
        return "linear"
    return name.split(" ")[1] if name.startswith("naive ") else name.split(" ")[0]


def cache_dir(name: str, out: Path) -> Path:
    """The run's sha256 cache: the shared, primed one for ``(hashes cached)`` runs, else an empty one of its own."""
    if WARM in name:
        return out.parent / "hash-cache-warm"
    fresh = out.parent / "hash-cache-cold"
    shutil.rmtree(fresh, ignore_errors=True)
    return fresh


def max_difference(x: Path, y: Path) -> float:
    """Largest absolute difference between two checkpoints' tensors (inf: other keys); in a child, as torch."""
    code = (
        "import sys, torch\nfrom paint.weights.io import CheckpointReader\n"
        "rx, ry = CheckpointReader(sys.argv[1]), CheckpointReader(sys.argv[2])\n"
        "same = set(rx.keys()) == set(ry.keys())\n"
        "d = max((float((rx.get(k).double() - ry.get(k).double()).abs().max()) for k in rx.keys()), default=0.0)\n"
        "print(d if same else float('inf'))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(x), str(y)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def goal_note(name: str, peak_ok: bool, ratio: float | None) -> str:
    """``met``, or what is not met and why."""
    missing = ([] if peak_ok else ["memory"]) + ([] if ratio is None or ratio <= 1.0 else ["time"])
    if not missing:
        return "met"
    method = name.removesuffix(BEFORE)
    why = WHY_NOT.get(method, "" if NO_HASH in method else WHY_NOT.get(method.split(" ")[0], ""))
    return f"NOT met ({' and '.join(missing)})" + (f": {why}" if why else "")


def report(results: list[dict], size: int, disk: dict[str, float]) -> bool:
    """Print the tables; return whether every goal is met.

    Each method is compared with the naive merge of the same method (``best / naive``) and with the naive
    linear merge (``best / naive linear``); a method without a naive twin (the SVD merges, RegMean) with the
    latter only. The time goal is read on ``best / naive``.
    """
    goal_mb = 0.25 * size / 2**20 + 300
    names = list(dict.fromkeys(r["name"] for r in results))
    peak = {n: max(r["peak_mb"] for r in results if r["name"] == n) for n in names}
    walls = {n: [r["wall_s"] for r in results if r["name"] == n] for n in names}
    naive = {method_of(n): min(walls[n]) for n in names if n.startswith("naive")}
    floor = disk.get("IO floor (read 2, write 1)")
    print(f"\ncheckpoint {size / 2**20:.1f} MiB; memory goal {goal_mb:.1f} MiB; wall seconds of fresh processes")
    print("\n| disk (same files) | wall (s) | GB/s |\n|---|---:|---:|")
    for n, sec in disk.items():
        nbytes = 1 if n.startswith("Python write") else {"cp (one checkpoint)": 2}.get(n, 3)
        print(f"| {n} | {sec:.2f} | {nbytes * size / sec / 1e9:.2f} |")
    cols = f"| {'merge':<36} | {'peak RSS (MiB)':>14} | {'wall (s), each run':<24} |"
    print(f"\n{cols} best / naive | best / naive linear | best / floor | goals |")
    print(f"|{'-' * 38}|{'-' * 15}:|{'-' * 26}|{'-' * 13}:|{'-' * 20}:|{'-' * 13}:|{'-' * 7}|")
    ok = True
    for n in names:
        best = min(walls[n])
        own = naive.get(method_of(n)) if not n.startswith("naive") else None
        reference = own or naive.get("linear")
        ratio = None if n.startswith("naive") or reference is None else best / reference
        note = "-" if n.startswith("naive") else goal_note(n, peak[n] <= goal_mb, ratio)
        note = "FAILED (traceback above)" if any(r.get("failed") for r in results if r["name"] == n) else note
        ok &= note in ("-", "met") or n.endswith(BEFORE)
        wall = " / ".join(f"{w:.1f}" for w in walls[n])
        vs_floor = f"{best / floor:.2f}x" if floor else "-"
        shown = "-" if ratio is None or own is None else f"{ratio:.2f}x"
        vs_linear = "-" if n == "naive" or "linear" not in naive else f"{best / naive['linear']:.2f}x"
        print(f"| {n:<36} | {peak[n]:>14,.0f} | {wall:<24} | {shown:>12} | {vs_linear:>19} | {vs_floor:>12} | {note} |")
    return ok


def disk_speed(paths: list[Path], work: Path) -> dict[str, float]:
    """Wall seconds of plain copies, reads and writes of the same files (best of two), and of hashing them."""
    files = [p / SAFE for p in paths]
    checks = {
        "cp (one checkpoint)": ("cp", files[1:2]),
        "Python read (3 inputs)": ("read", files),
        "Python write (one checkpoint)": ("write", files[1:2]),
        "IO floor (read 2, write 1)": ("floor", files[1:]),
        "sha256 of the 3 inputs, one thread": ("sha256", files),
    }
    out: dict[str, float] = {}
    for name, (mode, which) in checks.items():
        runs = []
        for _ in range(2):
            target = work / "disk-out"
            target.unlink(missing_ok=True)
            os.sync()
            runs.append(run_child("cp" if mode == "cp" else "disk", mode, which, target)["wall_s"])
        out[name] = min(runs)
        print(f"{name:>36}: {out[name]:6.2f}s", flush=True)
    (work / "disk-out").unlink(missing_ok=True)
    return out


def settle(paths: list[Path], work: Path) -> float:
    """Flush dirty pages, write one checkpoint's bytes and flush again; return that write's seconds.

    Every run starts after it, so that none pays for an earlier one's writeback nor for what a
    process leaves behind: the first large write after the naive merge's 5 GB process ends took 3-4 s
    of system time here (a plain 1.7 GB write, 0.3-0.8 s otherwise), slowing whichever run came next.
    """
    target = work / "disk-out"
    os.sync()
    seconds = run_child("disk", "write", [paths[1] / SAFE], target)["wall_s"]
    target.unlink(missing_ok=True)
    os.sync()
    return seconds


def plan(methods: list[str], repeats: int, before: str | None) -> list[tuple[str, str, str | None]]:
    """(mode, name, src) of every run: rounds of each fast method beside its naive merge, then the slow ones once."""
    one: list[tuple[str, str, str | None]] = []
    for m in (m for m in methods if m not in SLOW):
        one += [
            ("naive", "naive" if m == "linear" else f"naive {m}", None),
            ("stream", m, None),
            ("stream", m + WARM, None),
        ]
        one += [("stream", m + NO_HASH, None)] if m == "linear" else []
        one += [("stream", m + BEFORE, before)] if before else []
    slow = [("regmean", REGMEAN, None) if m == "regmean" else ("stream", m, None) for m in methods if m in SLOW]
    return one * repeats + slow


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="where to put the temporary checkpoints (default: a new temp dir)")
    ap.add_argument("--inputs", help="generate the checkpoints here once and reuse them (kept)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the naive merge and the fast methods")
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="vit-l14", help="checkpoint size (vit-b16: smaller)")
    ap.add_argument("--methods", nargs="+", default=list(METHOD_SETTINGS), help="methods to measure")
    ap.add_argument("--before-src", help="a src/ directory of other code to measure side by side ([before])")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--generate", nargs=3, metavar=("BASE", "A", "B"), help=argparse.SUPPRESS)
    ap.add_argument("--grams", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        generate([Path(p) for p in args.generate], clip_layout(args.layout), args.grams)
        return 0

    work = Path(tempfile.mkdtemp(prefix="paint-bench-", dir=args.workdir))
    inputs = Path(args.inputs) if args.inputs else work
    try:
        t = time.perf_counter()
        paths = [inputs / "base", inputs / "a", inputs / "b"]
        grams = "regmean" in args.methods
        if not all((p / SAFE).is_file() for p in paths) or (grams and not (paths[1] / "grams.safetensors").is_file()):
            for p in paths:
                shutil.rmtree(p, ignore_errors=True)
            # generate in a child so that this process never holds torch or tensors (see the module docstring)
            cmd = [sys.executable, __file__, "--layout", args.layout, "--generate", *map(str, paths)]
            subprocess.run(cmd + (["--grams"] if grams else []), check=True)
        size = (paths[0] / SAFE).stat().st_size
        print(f"3 {args.layout} checkpoints, {size / 1e9:.3f} GB each, ready in {time.perf_counter() - t:.1f}s")
        disk = disk_speed(paths, work)
        runs = plan(args.methods, args.repeats, args.before_src)
        results, spacers = [], []
        refs: dict[str, Path] = {}  # method -> the output of its first streamed run, kept to compare the others with
        differences: dict[str, float] = {}  # run name -> largest absolute difference from its method's reference
        if any(WARM in name for _, name, _ in runs):  # fill the shared cache once (not timed)
            run_child("stream", "task_arithmetic" + WARM, paths, work / "out-prime")
            shutil.rmtree(work / "out-prime", ignore_errors=True)
        for mode, name, src in runs:
            out = work / f"out-{name.replace(' ', '_')}"
            shutil.rmtree(out, ignore_errors=True)
            spacers.append(settle(paths, work))
            res = {"name": name, **run_child(mode, name, paths, out, src)}
            results.append(res)
            print(f"{name:>30}: peak RSS {res['peak_mb']:8.1f} MiB   wall {res['wall_s']:7.2f}s"
                  f"   (after imports {res['inner_s']:7.2f}s)", flush=True)  # fmt: skip
            method = method_of(name)
            if mode == "stream" and method not in refs and not res.get("failed"):
                refs[method] = out.rename(work / f"ref-{method}")
            elif (
                name not in differences
                and method in refs
                and out.exists()
                and not (name.startswith("naive") and "dare" in name)
            ):
                differences[name] = max_difference(out, refs[method])
            shutil.rmtree(out, ignore_errors=True)
        for ref in refs.values():
            shutil.rmtree(ref, ignore_errors=True)
        disk[f"Python write before each run (median of {len(spacers)})"] = sorted(spacers)[len(spacers) // 2]
        ok = report(results, size, disk)
        exact = True
        for name, diff in differences.items():
            strict = name == "naive" or not name.startswith("naive")
            exact &= diff == 0 or not strict
            kind = "must be bit-identical" if strict else "same maths, another order of operations"
            print(f"largest |difference| from {method_of(name)}'s streamed output, {name}: {diff:.3g} ({kind})")
        return 0 if ok and exact else 1
    finally:
        if args.keep or args.inputs:
            print(f"kept {inputs if args.inputs else work}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

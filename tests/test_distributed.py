"""Fine-tuning really runs multi-process: 2 CPU ranks (gloo DDP) under ``accelerate launch``.

The worker (``tests/_distributed_worker.py``) fine-tunes a tiny CLIP with 16 images per rank
per step; the same run in one process with 32 images per step must give the same weights,
since DDP averages the two half-batch gradients into the full-batch one and the sharded loader
splits each 32-batch of the shared shuffle between the ranks.

Note: ``accelerate launch --cpu --num_processes 2`` starts ONE process (Accelerate treats
``--cpu`` as single-process); on a CPU-only machine ``--multi_gpu`` is what starts N gloo ranks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("_distributed_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(model_dir: Path, out: Path, batch_per_process: int, processes: int) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(_free_port()),
        str(WORKER),
        str(model_dir),
        str(out),
        str(batch_per_process),
    ]
    env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tiny_clip_dir, tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend: cannot start CPU process groups")
    from safetensors.torch import load_file

    from paint.evaluation.results import evaluate_split
    from paint.models.clip import load_clip
    from paint.models.heads import zeroshot_head
    from paint.train.finetune import FinetuneConfig, TrainingSet, finetune
    from paint.weights.ops import is_image_tower_key
    from tests._distributed_worker import CFG, CLASSES, TEMPLATES, colour_task

    t0 = time.time()
    proc = _launch(tiny_clip_dir, tmp_path, batch_per_process=16, processes=2)
    launch_s = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["num_processes"] == 2 and "MULTI_CPU" in result["distributed_type"], result
    assert result["steps"] == 3 * 192 // 32  # 18 global steps: each one consumes 2 x 16 images

    # DDP kept the ranks bit-identical, and rank 0 alone wrote the checkpoint (it exists, complete).
    rank0, rank1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k
    ckpt = tmp_path / "run" / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 18 and state["done"]
    trained = load_file(str(ckpt / "trainable.safetensors"))
    assert trained and all(is_image_tower_key(k) for k in trained)
    for k, v in trained.items():
        assert torch.equal(v, rank0[k]), k
    assert (ckpt / "optimizer.safetensors").is_file()
    assert not list((tmp_path / "run").glob(".checkpoint.*"))  # no leftover temp dir from a second writer

    # The text side is untouched; the patched model learned the task.
    original = load_clip(str(tiny_clip_dir)).model.state_dict()
    for k, v in original.items():
        if not is_image_tower_key(k):
            assert torch.equal(v, rank0[k]), k
    assert result["acc_after"] >= 0.9 and result["acc_after"] > result["acc_before"] + 0.2, result

    # One process, 32 images per step: the same optimisation trajectory, up to float summation order.
    bundle = load_clip(str(tiny_clip_dir))
    head = zeroshot_head(bundle, CLASSES, TEMPLATES)
    xtr, ytr = colour_task(192, bundle.spec.crop, 0)
    xte, yte = colour_task(96, bundle.spec.crop, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra threads only fight the shared CPU
    try:
        single = finetune(
            bundle.model,
            [TrainingSet("colours", xtr, ytr, head)],
            bundle.spec,
            FinetuneConfig(batch_size=32, cpu=True, **CFG),
        )
    finally:
        torch.set_num_threads(threads)
    assert single.steps == result["steps"]
    ref = bundle.model.state_dict()
    worst = max(float((ref[k] - rank0[k]).abs().max()) for k in ref)
    moved = max(float((ref[k] - original[k]).abs().max()) for k in ref)
    # Adam divides by sqrt(v), so float-order noise grows a little over 18 steps; it must stay
    # orders of magnitude below what training moved (different batches would differ by ~moved).
    assert worst < 1e-3 and worst < 1e-2 * moved, (worst, moved)
    for a, b in zip(single.history, result["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    assert evaluate_split(bundle.model, head, xte, yte, bundle.spec)["accuracy"] == pytest.approx(
        result["acc_after"], abs=1 / 96 + 1e-9
    )
    print(
        f"launch {launch_s:.1f}s, max |2proc - 1proc| = {worst:.2e} (training moved {moved:.2e}), acc {result['acc_before']:.3f} -> {result['acc_after']:.3f}"
    )

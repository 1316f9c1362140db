"""Run by ``tests/test_distributed.py`` under ``accelerate launch``: fine-tune a tiny CLIP.

Usage: ``_distributed_worker.py MODEL_DIR OUT_DIR BATCH_PER_PROCESS``. Every rank fine-tunes
through :func:`paint.train.finetune.finetune` on the colour task of ``tests/test_finetune.py``;
each rank then writes its own final image-tower weights (``rank<i>.safetensors``) so the test
can check that DDP kept the ranks identical, and rank 0 writes ``result.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

CFG = dict(epochs=3, lr=3e-3, warmup_steps=2, weight_decay=0.0, seed=0)
CLASSES = ["red", "green", "blue"]
TEMPLATES = ["a photo of the {}."]


def colour_task(n: int, size: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Images filled with one of three colours plus noise; the label is the colour."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.float32)
    imgs = base[labels][:, :, None, None] + rng.normal(0, 25, (n, 3, size, size))
    return torch.from_numpy(imgs.clip(0, 255).astype(np.uint8)), labels


def main(model_dir: str, out_dir: str, batch_size: int) -> None:
    from safetensors.torch import save_file

    from paint.evaluation.results import evaluate_split
    from paint.models.clip import load_clip
    from paint.models.heads import zeroshot_head
    from paint.train.finetune import FinetuneConfig, TrainingSet, finetune

    torch.set_num_threads(1)  # two ranks share two cores
    out = Path(out_dir)
    bundle = load_clip(model_dir)
    head = zeroshot_head(bundle, CLASSES, TEMPLATES)
    xtr, ytr = colour_task(192, bundle.spec.crop, 0)
    xte, yte = colour_task(96, bundle.spec.crop, 1)
    acc0 = evaluate_split(bundle.model, head, xte, yte, bundle.spec)["accuracy"]
    cfg = FinetuneConfig(batch_size=batch_size, cpu=True, **CFG)
    res = finetune(
        bundle.model,
        [TrainingSet("colours", xtr, ytr, head)],
        bundle.spec,
        cfg,
        out_dir=out / "run",
        fingerprint="dist-test",
    )

    from accelerate import PartialState

    state = PartialState()
    rank = state.process_index
    save_file({k: v.contiguous() for k, v in bundle.model.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
    if state.is_main_process:
        acc1 = evaluate_split(bundle.model, head, xte, yte, bundle.spec)["accuracy"]
        record = {
            "num_processes": state.num_processes,
            "distributed_type": str(state.distributed_type),
            "steps": res.steps,
            "history": res.history,
            "acc_before": acc0,
            "acc_after": acc1,
            "world_size_env": os.environ.get("WORLD_SIZE"),
        }
        (out / "result.json").write_text(json.dumps(record, indent=1))
    state.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

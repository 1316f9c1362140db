"""The benchmarks' shared fine-tune: one task from theta_zs with the demo's recipe, cached on disk.

``benchmarks/bench_blocks.py`` and ``benchmarks/bench_merging.py`` import it (run as scripts, this
folder is on ``sys.path``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from paint.pipeline.pool import TaskPool
from paint.train.finetune import FinetuneConfig, TrainingSet, finetune
from paint.utils import hash_tensors


def finetune_config(epochs: int, seed: int, max_steps: int | None = None) -> FinetuneConfig:
    """The demo's recipe: lr 3e-4, batch 128, warmup 20, weight decay 0.1."""
    return FinetuneConfig(
        epochs=epochs, lr=3e-4, batch_size=128, warmup_steps=20, weight_decay=0.1, seed=seed, max_steps=max_steps
    )


def fine_tuned(pool: TaskPool, theta_zs: dict, name: str, cfg: FinetuneConfig, out: Path) -> dict:
    """theta_ft of one task from theta_zs, cached by (theta_zs, task, epochs, steps, seed); the pool ends at theta_zs."""
    from safetensors.torch import load_file, save_file

    steps = f"-m{cfg.max_steps}" if cfg.max_steps else ""
    path = out / f"theta_ft-{name}-{hash_tensors(theta_zs)[:10]}-e{cfg.epochs}{steps}-s{cfg.seed}.safetensors"
    if path.is_file():
        return load_file(str(path))
    pool.load(theta_zs)
    t = pool.task(name)
    t0 = time.time()
    finetune(pool.model, [TrainingSet(name, t.images["train"], t.labels["train"], t.head)], pool.spec, cfg)
    print(f"fine-tuned {name}: {cfg.epochs} epochs in {time.time() - t0:.0f}s", flush=True)
    theta = {k: v.detach().clone().contiguous() for k, v in pool.model.state_dict().items() if k in theta_zs}
    tmp = path.with_name(path.name + ".tmp")  # atomic: a killed run leaves no half-written cache entry
    save_file(theta, str(tmp))
    os.replace(tmp, path)
    pool.load(theta_zs)
    return theta

"""Time one fine-tuning step of a CLIP image tower at several torch thread counts (issue 13.1).

The step is paint's: image tower and projection trained with AdamW against a frozen zero-shot
head (here a random unit-norm head; the cost does not depend on its values), batch 128. Thread
counts are interleaved round by round so a change in machine load hits every count alike; the
median of the rounds is reported with the 1-minute load average before and after.

    PYTHONPATH=src python benchmarks/bench_threads.py                    # shipped model, 1 and 2 threads
    PYTHONPATH=src python benchmarks/bench_threads.py --model DIR --threads 1 4 8 --rounds 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F


def main() -> None:
    from paint.models.clip import load_clip

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="paint:default")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round (after one warm-up step)")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()

    bundle = load_clip(args.model)
    model = bundle.model
    vision, proj = model.vision_model, model.visual_projection
    opt = torch.optim.AdamW([*vision.parameters(), *proj.parameters()], lr=1e-5)
    head = F.normalize(torch.randn(10, proj.out_features), dim=-1)  # (C, D)
    x = torch.randn(args.batch_size, 3, bundle.spec.crop, bundle.spec.crop)  # (B, 3, S, S)
    y = torch.randint(0, 10, (args.batch_size,))

    def step() -> None:
        feats = F.normalize(proj(vision(pixel_values=x).pooler_output), dim=-1)  # (B, D)
        loss = F.cross_entropy(100.0 * feats @ head.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    load0 = os.getloadavg()[0]
    times: dict[int, list[float]] = {n: [] for n in args.threads}
    for _ in range(args.rounds):
        for n in args.threads:
            torch.set_num_threads(n)
            step()  # warm-up at this thread count
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[n].append((time.perf_counter() - t) / args.steps)
    print(
        f"{args.model}: batch {args.batch_size}, {os.cpu_count()} cores, load {load0:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    for n, v in times.items():
        print(
            f"threads={n}: median {statistics.median(v):.3f} s/step (min {min(v):.3f}, max {max(v):.3f}; "
            f"{args.rounds} rounds x {args.steps} steps)"
        )


if __name__ == "__main__":
    main()

"""Multi-process fine-tuning gives the single-process result: 2 ranks vs 1 with the same global batch (issue 16).

Launches paint's fine-tuning (frozen-head recipe, a random CLIP, random uint8 images) twice under
``accelerate launch``: one process with batch 2B, then two processes with batch B each (DDP; FSDP
with ``--fsdp``). DDP averages the two half-batch gradients into the full-batch one and the sharded
loader splits each 2B batch between the ranks, so the per-epoch losses and the final weights must
agree up to float summation order (bf16: rounding), and both DDP ranks must end bit-identical.

    PYTHONPATH=src python benchmarks/ddp_check.py --device cuda --arch b32 --batch 32   # 2+ GPUs: NCCL
    PYTHONPATH=src python benchmarks/ddp_check.py --device cpu --arch tiny              # gloo ranks on CPU

With ``--device cuda`` and fewer than two visible GPUs the ranks run on the CPU (gloo, ``--arch
tiny``; NCCL needs one GPU per rank) and the output says so. Under FSDP only the losses are compared:
the trained parameters stay sharded (docs/scaling.md, known gap). Exit status 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# Tolerances on the per-epoch mean losses and on the final image tower: ||theta_2proc - theta_1proc|| over
# ||theta_1proc - theta_zs|| (L2 over the whole tower; an elementwise max is dominated by parameters whose
# gradient is near zero, which Adam's ~lr * sign(grad) first steps send either way on a rounding difference).
LOSS_RTOL = {"no": 1e-4, "bf16": 2e-2}
WEIGHT_RTOL = {"no": 1e-2, "bf16": 5e-2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args: argparse.Namespace) -> None:
    """One rank: fine-tune, write its tower (DDP) and, on rank 0, the record."""
    import torch.nn.functional as F
    from accelerate import PartialState
    from safetensors.torch import save_file

    from paint.train.finetune import FinetuneConfig, TrainingSet, finetune
    from paint.types import is_image_tower_key

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_finetune import CLASSES, build_model

    state = PartialState(cpu=args.device == "cpu")  # cpu=True: gloo ranks (cpu=False sees one process there)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // max(1, state.num_processes)))
    with torch.device(state.device):
        model, spec = build_model(args.arch, "")
    zs = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if is_image_tower_key(k)}
    gen = torch.Generator().manual_seed(0)
    n = args.global_batch * args.steps_per_epoch
    images = torch.randint(0, 256, (n, 3, spec.crop, spec.crop), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    head = 100.0 * F.normalize(torch.randn(CLASSES, model.visual_projection.out_features, generator=gen), dim=-1)
    cfg = FinetuneConfig(
        epochs=args.epochs,
        lr=1e-4,
        batch_size=args.global_batch // state.num_processes,
        warmup_steps=2,
        weight_decay=0.0,
        seed=0,
        cpu=args.device == "cpu",
        mixed_precision=args.precision,
    )
    t = time.perf_counter()
    res = finetune(model, [TrainingSet("ddp", images, labels.numpy(), head)], spec, cfg)
    wall = time.perf_counter() - t
    out = Path(args.out)
    if not args.fsdp:
        tower = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if is_image_tower_key(k)}
        save_file(tower, str(out / f"rank{state.process_index}.safetensors"))
        if state.is_main_process:
            save_file(zs, str(out / "zs.safetensors"))
    if state.is_main_process:
        record = {
            "num_processes": state.num_processes,
            "distributed_type": str(state.distributed_type),
            "batch_per_process": cfg.batch_size,
            "steps": res.steps,
            "losses": [h["loss"] for h in res.history],
            "runtime": res.runtime,
            "wall_s": round(wall, 2),
        }
        (out / "result.json").write_text(json.dumps(record, indent=1))
    state.wait_for_everyone()


def launch(args: argparse.Namespace, processes: int, out: Path, device: str, fsdp: bool) -> dict:
    """Run the worker under ``accelerate launch`` with ``processes`` ranks; its rank-0 record."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    cmd += ["--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", args.precision]
    cmd += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port())]
    if fsdp:
        cmd += ["--use_fsdp", "--fsdp_version", "1", "--fsdp_sharding_strategy", "FULL_SHARD"]
        cmd += ["--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP"]
        cmd += ["--fsdp_transformer_layer_cls_to_wrap", "CLIPEncoderLayer"]
        cmd += ["--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_use_orig_params", "true"]
    elif processes > 1:
        cmd += ["--multi_gpu"]  # on a CPU-only setup this is what starts N gloo ranks (not --cpu)
    cmd += [__file__, "--worker", "--arch", args.arch, "--device", device, "--precision", args.precision]
    cmd += ["--global-batch", str(args.global_batch), "--steps-per-epoch", str(args.steps_per_epoch)]
    cmd += ["--epochs", str(args.epochs), "--out", str(out)] + (["--fsdp"] if fsdp else [])
    env = dict(
        os.environ,
        PAINT_PROGRESS="0",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"ddp_check: the {processes}-process launch failed (exit {proc.returncode})")
    record = json.loads((out / "result.json").read_text())
    record["launch_s"] = round(time.perf_counter() - t, 1)
    return record


def compare(one: dict, two: dict, out1: Path, out2: Path, precision: str, weights: bool) -> dict:
    """Loss and weight agreement of the 1- and 2-process runs (and DDP ranks bit-identical)."""
    from safetensors.torch import load_file

    losses = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(one["losses"], two["losses"])]
    report: dict = {
        "steps": [one["steps"], two["steps"]],
        "losses_1proc": one["losses"],
        "losses_2proc": two["losses"],
        "loss_max_rel_diff": max(losses),
        "loss_rtol": LOSS_RTOL[precision],
    }
    ok = one["steps"] == two["steps"] and len(losses) == len(one["losses"]) and max(losses) <= LOSS_RTOL[precision]
    if weights:
        zs, w1 = load_file(str(out1 / "zs.safetensors")), load_file(str(out1 / "rank0.safetensors"))
        r0, r1 = load_file(str(out2 / "rank0.safetensors")), load_file(str(out2 / "rank1.safetensors"))
        moved = float(torch.cat([(w1[k].float() - zs[k].float()).flatten() for k in zs]).norm())
        gap = float(torch.cat([(w1[k].float() - r0[k].float()).flatten() for k in zs]).norm())
        same_ranks = all(torch.equal(r0[k], r1[k]) for k in r0)
        rel = gap / moved if moved > 0 else float("inf")
        report.update(weight_rel_diff=rel, weight_rtol=WEIGHT_RTOL[precision], ranks_identical=same_ranks)
        ok = ok and same_ranks and rel <= WEIGHT_RTOL[precision]
    report["ok"] = ok
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["tiny", "b32", "l14"], default="tiny")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["no", "bf16"], default=None, help="default: bf16 on CUDA, no on CPU")
    ap.add_argument("--batch", type=int, default=16, help="per process in the 2-process run (global batch 2x)")
    ap.add_argument("--steps-per-epoch", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--fsdp", action="store_true", help="also run FSDP on 2 GPUs (needs 2 visible GPUs)")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per launch")
    ap.add_argument("--out", default="ddp-check")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--global-batch", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    device, arch = args.device, args.arch
    if device == "cuda" and gpus < 2:
        print(
            f"ddp_check: {gpus} GPU visible; NCCL needs one per rank, so the 2 ranks run on the CPU (gloo, tiny CLIP)"
        )
        device, arch = "cpu", "tiny"
    args.arch, args.global_batch = arch, 2 * args.batch
    if args.precision is None:
        args.precision = "bf16" if device == "cuda" else "no"
    out = Path(args.out)
    results = {"device": device, "arch": arch, "gpus_visible": gpus, "precision": args.precision}
    one = launch(args, 1, out / "p1", device, fsdp=False)
    two = launch(args, 2, out / "p2", device, fsdp=False)
    results["ddp"] = compare(one, two, out / "p1", out / "p2", args.precision, weights=True)
    results["ddp"].update(type=two["distributed_type"], wall_s=[one["wall_s"], two["wall_s"]])
    if args.fsdp and gpus >= 2:
        fsdp = launch(args, 2, out / "fsdp", "cuda", fsdp=True)
        results["fsdp"] = compare(one, fsdp, out / "p1", out / "fsdp", args.precision, weights=False)
        results["fsdp"].update(type=fsdp["distributed_type"], wall_s=fsdp["wall_s"])
    elif args.fsdp:
        results["fsdp"] = "skipped: needs 2 visible GPUs"
    for name in ("ddp", "fsdp"):
        r = results.get(name)
        if isinstance(r, dict):
            extra = (
                f", weights rel diff {r['weight_rel_diff']:.2e} (tol {r['weight_rtol']:g})"
                if "weight_rel_diff" in r
                else ""
            )
            same = f", ranks identical {r['ranks_identical']}" if "ranks_identical" in r else ""
            print(
                f"{name} ({r['type']}, {device}, {arch}, {args.precision}): 2 proc x {args.batch} vs 1 x {args.global_batch}, "
                f"steps {r['steps']}, loss max rel diff {r['loss_max_rel_diff']:.2e} (tol {r['loss_rtol']:g}){extra}{same}"
                f" -> {'OK' if r['ok'] else 'MISMATCH'}"
            )
        elif r is not None:
            print(f"{name}: {r}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for r in results.values() if isinstance(r, dict) and "ok" in r) else 1


if __name__ == "__main__":
    sys.exit(main())

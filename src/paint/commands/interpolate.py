"""paint interpolate: theta_alpha from theta_zs and theta_ft, as an HF checkpoint."""

from __future__ import annotations

import argparse


def register(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a paint patch output directory (uses its base model and fine-tuned tower)")
    src.add_argument("--finetuned", help="a fine-tuned HF CLIP checkpoint directory")
    p.add_argument("--zeroshot", help="the zero-shot HF CLIP checkpoint (with --finetuned)")
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--allow-extrapolation", action="store_true", help="permit alpha outside [0, 1]")
    p.add_argument("--out", required=True, help="output directory for the HF checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from paint.errors import PaintError
    from paint.models.clip import load_clip, save_clip
    from paint.weights.ops import check_compatible, interpolate

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise PaintError(f"output {out} exists and is not empty; pass --overwrite or choose another directory")
    if args.run:
        run_dir = Path(args.run)
        cfg_path, ft_path = run_dir / "config.yaml", run_dir / "finetune" / "checkpoint" / "trainable.safetensors"
        if not cfg_path.is_file() or not ft_path.is_file():
            raise PaintError(f"{run_dir} is not a paint patch run with a fine-tuned checkpoint")
        from safetensors.torch import load_file

        zs = load_clip(yaml.safe_load(cfg_path.read_text())["model"])
        # The run keeps only the fine-tuned image tower; the rest is the base model's.
        theta_ft = {**zs.model.state_dict(), **load_file(str(ft_path))}
    else:
        if not args.zeroshot:
            raise PaintError("--finetuned needs --zeroshot")
        zs = load_clip(args.zeroshot)
        theta_ft = load_clip(args.finetuned).model.state_dict()
    theta_zs = zs.model.state_dict()
    check_compatible(theta_zs, theta_ft, ("zero-shot model", "fine-tuned model"))
    mixed = interpolate(
        theta_zs, theta_ft, args.alpha, keys=zs.family.is_image_tower_key, allow_extrapolation=args.allow_extrapolation
    )
    save_clip(zs, args.out, state_dict=mixed)
    print(f"wrote theta_alpha (alpha={args.alpha:g}) to {args.out}")
    return 0

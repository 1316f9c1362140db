"""paint interpolate: theta_alpha from theta_zs and theta_ft, as an HF checkpoint with a model card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from paint.errors import PaintError
from paint.models.clip import load_clip, save_clip
from paint.pipeline.locks import output_lock
from paint.pipeline.report import write_markdown
from paint.train.checkpoint import TRAINABLE, load_checkpoint_file
from paint.utils import atomic_path
from paint.weights.methods import PAINT, WISE_FT
from paint.weights.ops import check_alpha, check_compatible, interpolate
from paint.weights.writer import check_finite

if TYPE_CHECKING:
    import torch

    from paint.models.clip import ClipBundle


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

    alpha = check_alpha(args.alpha, args.allow_extrapolation)  # NaN, inf, out of range: refused before any loading
    out = Path(args.out)
    check_output(out, args.overwrite)
    zs, theta_ft, sources = load_pair(args)
    theta_zs = zs.model.state_dict()
    check_compatible(theta_zs, theta_ft, ("zero-shot model", "fine-tuned model"))
    mixed = interpolate(
        theta_zs, theta_ft, alpha, keys=zs.family.is_image_tower_key, allow_extrapolation=args.allow_extrapolation
    )
    with output_lock(out, "paint interpolate"):
        check_output(out, args.overwrite)  # again under the lock: another process may have written it meanwhile
        write_interpolated(zs, mixed, out, interpolation_card(zs.family.name, sources, alpha))
    print(f"wrote theta_alpha (alpha={alpha:g}) with a model card to {out}")
    return 0


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing file, or a non-empty directory without ``--overwrite``."""

    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise PaintError(f"output {out} exists and is not empty; pass --overwrite or choose another directory")


def load_pair(args: argparse.Namespace) -> tuple[ClipBundle, dict[str, torch.Tensor], dict[str, str]]:
    """(zero-shot bundle, theta_ft as a full state dict, the two sources for the model card)."""

    if args.run:
        return load_run(Path(args.run))
    if not args.zeroshot:
        raise PaintError("--finetuned needs --zeroshot")
    zs = load_clip(args.zeroshot)
    theta_ft = load_clip(args.finetuned).model.state_dict()
    return zs, theta_ft, {"zeroshot": args.zeroshot, "finetuned": args.finetuned}


def load_run(run_dir: Path) -> tuple[ClipBundle, dict[str, torch.Tensor], dict[str, str]]:
    """A finished ``paint patch`` run's base model and fine-tuned tower, its checkpoint verified first."""
    import yaml

    cfg_path, ft_path = run_dir / "config.yaml", run_dir / "finetune" / "checkpoint" / TRAINABLE
    if not cfg_path.is_file() or not ft_path.is_file():
        raise PaintError(f"{run_dir} is not a paint patch run with a fine-tuned checkpoint")
    trained = load_checkpoint_file(ft_path)  # checksums verified: a damaged file is refused, not mixed in
    model = yaml.safe_load(cfg_path.read_text())["model"]
    zs = load_clip(model)
    # The run keeps only the fine-tuned image tower; the rest is the base model's.
    return zs, {**zs.model.state_dict(), **trained}, {"zeroshot": str(model), "finetuned": str(ft_path)}


def write_interpolated(zs: ClipBundle, mixed: dict[str, torch.Tensor], out: Path, card: str) -> None:
    """The HF checkpoint and its model card (README.md), moved into place together; non-finite weights refused."""

    for key, t in mixed.items():
        check_finite(key, t)
    with atomic_path(out) as tmp:
        save_clip(zs, tmp, state_dict=mixed)
        write_markdown(tmp / "README.md", card)


def interpolation_card(family: str, sources: dict[str, str], alpha: float) -> str:
    """README.md of an interpolated checkpoint: the formula and alpha, the papers, the two inputs."""

    title = {"clip": "CLIP", "siglip": "SigLIP"}.get(family, family)
    extrapolated = "" if 0.0 <= alpha <= 1.0 else " (extrapolated: outside [0, 1])"
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            "pipeline_tag: zero-shot-image-classification",
            f"tags: [{family}, paint, weight-interpolation]",
            "---",
            "",
            f"# Interpolated {title}: alpha = {alpha:g}",
            "",
            "Made with `paint interpolate`: the image tower is "
            f"`theta = (1 - alpha) * theta_zs + alpha * theta_ft` with alpha = **{alpha:g}**{extrapolated}; "
            "every other tensor (text tower, projections, logit scale) is the zero-shot model's.",
            "",
            "## Method",
            "",
            f"- {PAINT.cite()}",
            f"- {WISE_FT.cite()}",
            "",
            "## Inputs",
            "",
            "| role | source |",
            "|---|---|",
            f"| zero-shot (theta_zs) | `{sources['zeroshot']}` |",
            f"| fine-tuned (theta_ft) | `{sources['finetuned']}` |",
            "",
            "## Evaluation",
            "",
            "Not evaluated by `paint interpolate` (`paint patch` chooses alpha on validation splits and reports "
            "test accuracy; `paint evaluate` measures a checkpoint).",
            "",
        ]
    )

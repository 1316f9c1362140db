"""paint convert SRC OUT: OpenAI CLIP / open_clip state dict -> Hugging Face CLIPModel checkpoint."""

from __future__ import annotations

import argparse
import sys

from paint.models.convert import convert_checkpoint, missing_tokenizer_note


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="state dict: .safetensors, or .bin/.pt/.pth (read with weights_only=True)")
    p.add_argument("out", help="output directory (model.safetensors + config.json)")
    p.add_argument("--format", choices=["auto", "openai", "open_clip"], default="auto", help="source key layout")
    p.add_argument("--vision-heads", type=int, help="attention heads of the image tower (default width // 64)")
    p.add_argument("--text-heads", type=int, help="attention heads of the text tower (default width // 64)")
    p.add_argument(
        "--hidden-act",
        choices=["quick_gelu", "gelu"],
        default="quick_gelu",
        help="MLP activation: quick_gelu for OpenAI weights and open_clip '-quickgelu' models, gelu otherwise",
    )
    p.add_argument("--max-shard-size", default="2GB", help="largest output shard, e.g. 500MB")
    p.add_argument("--tokenizer-from", help="HF CLIP directory whose tokenizer and processor files are copied")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def run(args: argparse.Namespace) -> int:

    summary = convert_checkpoint(
        args.src,
        args.out,
        fmt=args.format,
        vision_heads=args.vision_heads,
        text_heads=args.text_heads,
        hidden_act=args.hidden_act,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        tokenizer_from=args.tokenizer_from,
    )
    print(
        f"converted {summary['tensors']} tensors ({summary['format']} layout) to {args.out}: "
        f"ViT width {summary['vision_width']}, {summary['vision_layers']} layers, patch {summary['patch_size']}, "
        f"image {summary['image_size']}; text width {summary['text_width']}, {summary['text_layers']} layers"
    )
    if summary["tokenizer_from"] is None:
        print(missing_tokenizer_note(args.out), file=sys.stderr)
    return 0

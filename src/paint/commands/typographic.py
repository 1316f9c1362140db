"""paint typographic {render,eval,run}: typographic attacks: write them, measure them, patch them.

- ``render``: write a task's split with a misleading class name on every image, in the file
  convention of the paper's released data (``label=dog_text=cat.png``).
- ``eval``: accuracy and attack success of a model on a folder in that convention.
- ``run``: the case study: patch on one task's attacked images, test on other tasks' attacked images.
"""

from __future__ import annotations

import argparse
import json

from paint.commands._shared import add_race_option, add_set_option, load_run_config, selection_sets
from paint.commands.triage import with_epochs
from paint.config import parse_config
from paint.data.preprocess import preprocess_split
from paint.data.registry import load_task
from paint.data.spec import TaskSpec
from paint.data.task import SubsetSplit
from paint.evaluation.results import predict
from paint.models.clip import load_clip
from paint.models.heads import zeroshot_head
from paint.studies.attacks import AttackedSplit, attack_metrics, read_attacked_dir, write_attacked_dataset
from paint.studies.typographic import TypographicConfig, run_typographic
from paint.studies.typographic_report import styles_table, typographic_table
from paint.world.lettering import AttackStyle


def _style_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attack style (defaults resemble the offline world's labelled images)")
    g.add_argument("--font", help="font file, or a matplotlib bundled font name (default DejaVuSans-Bold.ttf)")
    g.add_argument("--font-size", type=float, help="glyph height as a fraction of the image height (default 0.31)")
    g.add_argument(
        "--colour", help="contrast | random | white | black | a world colour name | R,G,B (default contrast)"
    )
    g.add_argument(
        "--position", help="center | top | bottom | random | X,Y fractions of the text centre (default center)"
    )
    g.add_argument("--jitter", type=float, help="random shift of the centre, fraction of the image size (default 0.15)")
    g.add_argument("--opacity", type=float, help="0..1 (default 1)")


def _style_overrides(args: argparse.Namespace) -> dict:
    def pair_or_word(v: str | None, n: int, cast):
        if v is None or "," not in v:
            return v
        parts = [cast(x) for x in v.split(",")]
        return parts if len(parts) == n else v

    style = {
        "font": args.font,
        "font_size": args.font_size,
        "colour": pair_or_word(args.colour, 3, int),
        "position": pair_or_word(args.position, 2, float),
        "jitter": args.jitter,
        "opacity": args.opacity,
    }
    return {k: v for k, v in style.items() if v is not None}


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = sub.add_parser("render", help="write an attacked copy of a task's split (label=<class>_text=<class>.png)")
    r.add_argument("--task", required=True, help="built-in task name")
    r.add_argument("--split", default="test", choices=["train", "val", "test"])
    r.add_argument("--out", required=True, help="output folder (replaced atomically)")
    r.add_argument("--seed", type=int, default=0, help="chooses the written word of every image")
    r.add_argument("--limit", type=int, help="write only the first N images")
    _style_args(r)

    e = sub.add_parser("eval", help="accuracy and attack success of a model on a folder of attacked images")
    e.add_argument("--data", required=True, help="folder of label=<class>_text=<class>.png images")
    e.add_argument("--model", default="paint:default", help="HF CLIP directory, hub id, or paint:default")
    e.add_argument(
        "--task", help="built-in task whose class names and templates to use (default: names from the files)"
    )
    e.add_argument(
        "--template", action="append", help="prompt template with {} (repeatable; default 'a photo of a {}.')"
    )
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--json", action="store_true", help="print JSON")

    u = sub.add_parser("run", help="patch on one task's attacked images; test on other tasks' attacked images")
    u.add_argument(
        "config", nargs="?", help="optional YAML config (the fields of paint.studies.typographic.TypographicConfig)"
    )
    u.add_argument("--output-dir", help="run directory")
    u.add_argument("--model", help="HF CLIP directory, hub id, or paint:default (the default)")
    u.add_argument("--patch-task", help="task whose attacked images are fine-tuned on (default: shapes)")
    u.add_argument(
        "--transfer-task", action="append", help="held-out task (repeatable; default: colours, rendered-digits)"
    )
    u.add_argument("--support", action="append", help="support task for alpha selection, clean images (repeatable)")
    u.add_argument("--max-train", type=int, help="use at most this many training images")
    u.add_argument("--max-eval", type=int, help="use at most this many images per validation/test split")
    u.add_argument("--epochs", type=int, help="fine-tuning epochs (overrides finetune.epochs)")
    u.add_argument("--rule", choices=["mean", "constrained"], help="alpha selection rule (default: constrained)")
    u.add_argument(
        "--constraint",
        choices=["each", "mean"],
        help="constrained rule: bound each support task or their mean (default: mean)",
    )
    u.add_argument(
        "--train-on",
        choices=["attacked", "both"],
        help="fine-tune on attacked images, or on clean and attacked (default: both)",
    )
    u.add_argument("--seed", type=int, help="seed of the written words")
    u.add_argument("--cache-dir", help="where preprocessed images and heads are cached")
    u.add_argument("--resume", action="store_true", help="continue the run in the same output directory")
    add_set_option(u)
    add_race_option(u)
    _style_args(u)


def run(args: argparse.Namespace) -> int:
    return {"render": _render, "eval": _eval, "run": _run}[args.action](args)


def _render(args: argparse.Namespace) -> int:
    import numpy as np

    style = parse_config(AttackStyle, _style_overrides(args), "attack style")
    task, _ = load_task(TaskSpec(name=args.task))
    split = task.split(args.split)
    if args.limit is not None and args.limit < len(split):
        split = SubsetSplit(split, np.arange(max(1, args.limit)), f"{split.identity}/first{args.limit}")
    attacked = AttackedSplit(split, task.classnames, style, args.seed)
    names = write_attacked_dataset(attacked, args.out)
    print(f"wrote {len(names)} images to {args.out}/ (e.g. {names[0]}), with manifest.jsonl and attack.json")
    return 0


def _eval(args: argparse.Namespace) -> int:

    classnames, templates = None, args.template or ["a photo of a {}."]
    if args.task:
        task, _ = load_task(TaskSpec(name=args.task))
        classnames, templates = task.classnames, args.template or task.templates
    split, names = read_attacked_dir(args.data, classnames)
    bundle = load_clip(args.model)
    head = zeroshot_head(bundle, names, templates)
    logits = predict(
        bundle.model, head, preprocess_split(split, bundle.spec, progress=True), bundle.spec, args.batch_size
    )
    m = attack_metrics(None, logits, split.labels, split.texts)
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        print(
            f"{m['n']} attacked images: accuracy {100 * m['attacked_accuracy']:.1f}%, "
            f"predicted as the written word {100 * m['text_rate']:.1f}%"
        )
    return 0


def run_config(args: argparse.Namespace) -> TypographicConfig:
    """``typographic run``'s validated config: the YAML file, then --set, then the flags."""

    overrides = {
        "output_dir": args.output_dir,
        "model": args.model,
        "patch_task": args.patch_task,
        "transfer_tasks": args.transfer_task,
        "support_tasks": args.support,
        "max_train": args.max_train,
        "max_eval": args.max_eval,
        "train_on": args.train_on,
        "seed": args.seed,
        "cache_dir": args.cache_dir,
    }
    style = _style_overrides(args)
    if style:
        base = {}
        if args.config:
            import yaml

            with open(args.config, encoding="utf-8") as f:
                base = (yaml.safe_load(f) or {}).get("attack") or {}
        overrides["attack"] = {**base, **style}  # flags refine the config's attack section
    selection_sets(args)
    return with_epochs(load_run_config(TypographicConfig, args.config, overrides, args), args.epochs)


def _run(args: argparse.Namespace) -> int:

    cfg = run_config(args)
    summary = run_typographic(cfg, resume=args.resume)
    if cfg.seeds is not None:
        print(f"test (%) over seeds {summary['seeds']}, mean ± 95% t half-width")
        print(summary["table"])
        print(f"outputs: {cfg.output_dir}/ (summary.md, summary.json, seed-<s>/)")
        return 0
    print(f"chosen alpha: {summary['alpha']:.3g} ({summary['selection']['rule']} rule)")
    print(typographic_table(summary["test"]))
    styles = styles_table(summary["test"])
    if styles:
        print("\nlettering styles never trained on (test; attacked accuracy % / attack success rate %):")
        print(styles)
    print(f"outputs: {cfg.output_dir}/ (summary.md, summary.json, sweep.png, results.jsonl, config.yaml, data/)")
    return 0

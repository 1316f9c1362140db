"""paint compare CONFIG.yaml: fine-tuning recipes compared on the patch-versus-forgetting frontier."""

from __future__ import annotations

import argparse

from paint.commands._shared import add_run_options, load_run_config
from paint.studies.compare import CompareConfig, run_compare
from paint.train.recipes.registry import recipe_names


def register(p: argparse.ArgumentParser) -> None:
    add_run_options(
        p,
        "YAML config (model, output_dir, patch_tasks, support_tasks, finetune, recipes, selection)",
        "continue in the same output_dir; finished recipes are kept",
    )
    # From the registry, so a recipe added (or registered by a plugin) is listed without editing this.
    p.epilog = f"recipes: {', '.join(recipe_names())} (a name, or {{recipe: {{name: ..., <its settings>}}}})"


def config(args: argparse.Namespace) -> CompareConfig:
    """The run's validated config: the YAML file, then --set, then the flags."""

    return load_run_config(CompareConfig, args.config, {"output_dir": args.output_dir}, args)


def run(args: argparse.Namespace) -> int:

    cfg = config(args)
    summary = run_compare(cfg, resume=args.resume)
    print("test accuracy (%) by fine-tuning recipe")
    print(summary["table"])
    if summary["skipped_on_resume"]:
        print(f"kept from the previous run: {', '.join(summary['skipped_on_resume'])}")
    where = "recipes/<label>/" if cfg.seeds is None else "seed-<s>/recipes/<label>/"
    print(f"outputs: {cfg.output_dir}/ (comparison.md, comparison.json, frontier.png, {where})")
    return 0

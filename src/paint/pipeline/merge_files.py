"""What a merge writes beside its weights: the base's tokenizer and processor files it carries over, the
inputs' hashes, and the model card (``README.md``) that records the method, its parameters and its paper."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from paint.errors import PaintError
from paint.pipeline.merge_config import CARRIED_FILES, CONFIG_NAME, MergeConfig
from paint.weights.io import CheckpointReader, file_sha256
from paint.weights.methods import GREEDY_SOUP, get_method
from paint.weights.soup import GREEDY_SOUP_PAPERS


def check_carried_files(base: Path) -> None:
    """The base's JSON files that the output will carry (config, tokenizer, processor) parse as JSON objects."""
    if not base.is_dir():
        return
    for name in CARRIED_FILES:
        path = base / name
        if not name.endswith(".json") or not path.is_file():
            continue
        try:
            ok = isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
            why = "is not a JSON object"
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            ok, why = False, f"is not valid JSON ({str(e).splitlines()[0]})"
        if not ok:
            raise PaintError(f"base file {path} {why}; fix or remove it (the merge would copy it into the output)")


def carry_files(base: Path, dest: Path) -> list[str]:
    """Copy config, tokenizer and processor files from a base directory; return their names."""
    if not base.is_dir():
        return []
    copied = []
    for name in CARRIED_FILES:
        if (base / name).is_file():
            shutil.copy2(base / name, dest / name)
            copied.append(name)
    return copied


def input_hashes(
    readers: list[CheckpointReader], labels: list[str], known: Mapping[str, str] | None = None
) -> list[dict[str, str]]:
    """One row per input file; each distinct file is hashed once (``known``: hashes computed while streaming)."""
    digests = {Path(p).resolve(): h for p, h in (known or {}).items()}
    rows = []
    for label, r in zip(labels, readers):
        for f in r.files:
            if f.resolve() not in digests:
                digests[f.resolve()] = file_sha256(f)
            rows.append({"input": label, "file": str(f), "sha256": digests[f.resolve()]})
    return rows


def _card_inputs(cfg: MergeConfig, summary: Mapping[str, Any]) -> list[str]:
    """The model card's inputs section: roles, paths and weights, then each file's sha256."""
    lines = [
        "## Inputs",
        "",
        "| role | path | weight |",
        "|---|---|---|",
        f"| base | `{cfg.base}` | |",
        *[f"| model {i} | `{m.path}` | {m.weight:g} |" for i, m in enumerate(cfg.models)],
        "",
    ]
    if summary.get("input_hashes"):
        lines += ["| input | file | sha256 |", "|---|---|---|"]
        lines += [f"| {h['input']} | `{Path(h['file']).name}` | `{h['sha256']}` |" for h in summary["input_hashes"]]
        lines.append("")
    return lines


def model_card(cfg: MergeConfig, summary: Mapping[str, Any]) -> str:
    """README.md for the merged checkpoint: method and papers, inputs with hashes, results, config."""
    if cfg.method == GREEDY_SOUP:
        papers, description = (
            GREEDY_SOUP_PAPERS,
            "greedy soup: add models by validation accuracy while it does not fall",
        )
    else:
        m = get_method(cfg.method)
        papers, description = m.papers, m.description
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- paint",
        "- merge",
        f"- {cfg.method}",
        "---",
        "",
        f"# Merged model ({cfg.method})",
        "",
        f"Made with `paint merge`: {description}.",
        "",
        "## Method",
        "",
        *[f"- {p.cite()}" for p in papers],
        "",
        f"Parameters: `{json.dumps(summary['parameters'], sort_keys=True)}`",
        "",
        *_card_inputs(cfg, summary),
        "## Evaluation",
        "",
    ]
    evaluation = summary.get("evaluation")
    if evaluation:
        lines.append("```json")
        lines.append(json.dumps(evaluation, indent=2, sort_keys=True))
        lines.append("```")
    else:
        lines.append("Not evaluated by the merge.")
    stats = summary["stats"]
    lines += [
        "",
        "## Output",
        "",
        f"{stats['tensors']} tensors ({stats['merged']} merged, {stats['copied']} copied from the base), "
        f"{stats['bytes'] / 1e6:.1f} MB in {', '.join(stats['files'])}.",
        "",
        f"## Merge config (`{CONFIG_NAME}`)",
        "",
        "```yaml",
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)

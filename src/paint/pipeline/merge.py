"""``paint merge``: a validated merge config -> a standard HF checkpoint with a model card.

:func:`run_merge` checks everything before any tensor data is read (every file exists,
keys, shapes and dtypes agree, the method and its parameters are valid), then streams the
merge tensor by tensor into a temporary directory, adds the base's config, tokenizer and
processor files, a model card (README.md) and the resolved config, and moves the directory
into place. The output is locked while it is written (a second merge into it is refused at
once) and the temporaries that a killed merge left beside it are removed
(:func:`paint.pipeline.locks.output_lock`).

RegMean (``method: regmean``) needs data: each model names its task, and before the streamed
merge every model runs on images of its task (loaded one at a time into the base's
architecture) to gather the Gram matrices of its image tower's linear layers
(:mod:`paint.pipeline.regmean`). Each model's are written to a safetensors file as soon as its
forward pass is done, in the output's temporary directory beside it (removed with it, whatever
happens), and the merge reads one matrix at a time: one model's Gram matrices in memory while
gathering, ``N`` models' worth on disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from paint.config import dump_config
from paint.data.preprocess import preprocess_split
from paint.data.registry import load_task
from paint.errors import PaintError
from paint.evaluation.results import evaluate_split
from paint.models.clip import check_local_checkpoint, checkpoint_family, load_clip, resolve_model_source
from paint.models.heads import zeroshot_head
from paint.pipeline.locks import output_lock
from paint.pipeline.merge_config import CONFIG_NAME, SUMMARY_NAME, Evaluate, MergeConfig
from paint.pipeline.merge_files import carry_files, check_carried_files, input_hashes, model_card
from paint.pipeline.regmean import stored_grams
from paint.types import is_image_tower_key
from paint.utils import atomic_path, write_json_atomic, write_text_atomic
from paint.weights.blocks import block_names
from paint.weights.hashcache import FileStamp, HashCache, default_cache_dir, stamp
from paint.weights.io import CheckpointReader
from paint.weights.methods import GREEDY_SOUP, METHODS, with_block_weights
from paint.weights.regmean import with_grams
from paint.weights.soup import greedy_soup
from paint.weights.stream import (
    check_files,
    check_layouts,
    resolve,
    stream_merge_into,
)
from paint.weights.writer import parse_size, write_state_dict_into

log = logging.getLogger(__name__)


# Files of an HF model directory that describe the model rather than hold its weights.
def accuracy_evaluator(
    model: torch.nn.Module,
    head: torch.Tensor,
    images: torch.Tensor,
    labels: Any,
    spec: Any,
    batch_size: int = 256,
) -> Evaluate:
    """An ``evaluate(state_dict) -> accuracy`` callback on one validation split, for greedy soup.

    Each call loads the state dict into ``model`` (its weights are replaced) and runs
    :func:`paint.evaluation.results.evaluate_split` with the given zero-shot ``head``.

    Args:
        model: a transformers CLIPModel of the merged architecture.
        head: (C, D) zero-shot head, e.g. from :func:`paint.models.heads.zeroshot_head`.
        images: (N, 3, H, W) uint8 validation images.
        labels: (N,) class indices.
        spec: the model's :class:`paint.data.preprocess.ImageSpec`.
        batch_size: evaluation batch size.
    """

    def evaluate(state_dict: Mapping[str, torch.Tensor]) -> float:
        model.load_state_dict(dict(state_dict), strict=True)
        return float(evaluate_split(model, head, images, labels, spec, batch_size)["accuracy"])

    return evaluate


def merge_evaluator(cfg: MergeConfig, split: str = "val") -> Evaluate | None:
    """The ``evaluate_on`` task as an accuracy callback: the base model's architecture and zero-shot head."""
    if cfg.evaluate_on is None:
        return None

    task, _ = load_task(cfg.evaluate_on)
    data = task.split(split)
    bundle = load_clip(cfg.base)
    head = zeroshot_head(bundle, task.classnames, task.templates)
    images = preprocess_split(data, bundle.spec, progress=True)
    return accuracy_evaluator(bundle.model, head, images, data.labels, bundle.spec)


def _resolve_source(path: str) -> str:
    """``paint:default`` and friends -> a path (the model module owns that mapping)."""

    return resolve_model_source(path)


def validate_merge(cfg: MergeConfig, evaluate: Evaluate | None = None) -> tuple[list[CheckpointReader], Any]:
    """Every check that needs no tensor data; return the opened inputs and the validated parameters."""
    weights = [m.weight for m in cfg.models]
    if cfg.method == GREEDY_SOUP:
        if evaluate is None:
            raise PaintError(
                "greedy_soup needs an evaluation: set evaluate_on to a task (its val split scores each soup)"
            )
        if cfg.parameters:
            raise PaintError(f"greedy_soup takes no parameters, got {sorted(cfg.parameters)}")
        if cfg.include is not None or any(m.weight != 1.0 for m in cfg.models):
            raise PaintError("greedy_soup averages whole models uniformly; remove include and per-model weights")
        params = None
    else:
        _, _, params = resolve(cfg.method, len(weights), weights, cfg.parameters)
    out = Path(cfg.output).resolve()
    sources = [_resolve_source(cfg.base)] + [_resolve_source(m.path) for m in cfg.models]
    for s in sources:
        p = Path(s).resolve()
        if p == out or out in p.parents:
            raise PaintError(f"output {cfg.output} would overwrite input {s}; choose another output directory")
    check_output(cfg)
    readers = [CheckpointReader(s) for s in sources]
    check_layouts(readers[0].infos, [r.infos for r in readers[1:]], [f"model {m.path}" for m in cfg.models])
    check_files(readers)
    check_carried_files(Path(readers[0].path))
    check_block_weights(cfg, readers[0].infos)
    check_tasks(cfg)
    return readers, params


def check_output(cfg: MergeConfig) -> None:
    """Refuse an output that is a file, or a non-empty directory without ``overwrite``."""
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise PaintError(f"output {cfg.output} is an existing file, not a directory; choose a directory path")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise PaintError(
            f"output {cfg.output} exists and is not empty; set overwrite: true or choose another directory"
        )


def check_tasks(cfg: MergeConfig) -> None:
    """A method that runs the models on data (regmean) has a task per model and a loadable base; others take none."""
    needs = cfg.method in METHODS and METHODS[cfg.method].needs_data
    if not needs:
        given = [m.path for m in cfg.models if m.task is not None]
        if given:
            raise PaintError(
                f"model {given[0]}: a task is only used by method 'regmean', not {cfg.method!r}; remove it"
            )
        return
    missing = [m.path for m in cfg.models if m.task is None]
    if missing:
        raise PaintError(
            f"method {cfg.method!r} runs every model on its own task: model {missing[0]} has none; "
            "give each model one, e.g. models: [{path: ft-digits/, task: {name: digits}}, ...]"
        )

    base = Path(_resolve_source(cfg.base))
    if not base.is_dir():
        raise PaintError(
            f"method {cfg.method!r} runs the models in the base's architecture: base {cfg.base} must be a model "
            "directory (config.json, tokenizer, processor) that load_clip reads"
        )
    check_local_checkpoint(base)
    checkpoint_family(str(base))


def check_block_weights(cfg: MergeConfig, base_keys: Any) -> None:
    """Per-block weights: task arithmetic only, exactly the blocks of the base's image tower (before any data)."""
    if all(m.block_weights is None for m in cfg.models):
        return

    if cfg.method != "task_arithmetic":
        raise PaintError(f"per-block weights (block_weights) need method 'task_arithmetic', not {cfg.method!r}")
    blocks = block_names(k for k in base_keys if is_image_tower_key(k))
    for m in cfg.models:
        if m.block_weights is None:
            continue
        missing, extra = sorted(set(blocks) - set(m.block_weights)), sorted(set(m.block_weights) - set(blocks))
        if missing or extra:
            what = f"no coefficient for block {missing[0]!r}" if missing else f"unknown block {extra[0]!r}"
            raise PaintError(f"model {m.path}: block_weights has {what}; the base's image tower has blocks {blocks}")


def _soup_into(tmp: Path, cfg: MergeConfig, readers: list[CheckpointReader], evaluate: Evaluate) -> dict[str, Any]:
    """Greedy soup written into ``tmp``: stats and evaluation (ingredients kept, with the val score after each)."""
    soup = greedy_soup([r.as_mapping() for r in readers[1:]], evaluate)
    files = write_state_dict_into(soup.state_dict, tmp, parse_size(cfg.max_shard_size))
    tensors = soup.state_dict.values()
    stats = {
        "tensors": len(soup.state_dict),
        "merged": sum(t.is_floating_point() for t in tensors),
        "copied": sum(not t.is_floating_point() for t in tensors),
        "bytes": sum(t.numel() * t.element_size() for t in tensors),
        "files": [f.name for f in files],
    }
    evaluation = {
        "val_accuracy": soup.accuracy,
        "ingredients": [cfg.models[i].path for i in soup.ingredients],
        "kept": [{"path": cfg.models[i].path, "val_accuracy": a} for i, a in soup.kept()],
        "individual": {cfg.models[i].path: a for i, a in enumerate(soup.individual)},
        "history": soup.history,
    }
    return {"stats": stats, "evaluation": evaluation, "parameters": {}, "hashes": {}}


def _stream_into(
    tmp: Path,
    cfg: MergeConfig,
    readers: list[CheckpointReader],
    params: Any,
    evaluate: Evaluate | None,
    progress: bool,
    known_hashes: Mapping[Path, str],
) -> dict[str, Any]:
    """The streamed merge written into ``tmp``: stats, parameters, input hashes and the optional evaluation."""
    weights = [m.weight for m in cfg.models]
    method, w, p = resolve(cfg.method, len(weights), weights, params)
    if any(m.block_weights is not None for m in cfg.models):
        method = with_block_weights(method, [m.block_weights for m in cfg.models])
    if method.needs_data:  # regmean: every model's Gram matrices on its task, models run one at a time
        models = [(r, m.task) for r, m in zip(readers[1:], cfg.models)]
        grams = tmp.parent / "regmean-grams"  # atomic_path's own directory: removed with it, whatever happens
        method = with_grams(method, stored_grams(cfg.base, models, p, grams, progress))
    merged = stream_merge_into(
        tmp,
        readers,
        method,
        w,
        p,
        include=cfg.include,
        max_shard_bytes=parse_size(cfg.max_shard_size),
        chunk_bytes=parse_size(cfg.chunk_size),
        progress=progress,
        hash_inputs=cfg.hash_inputs,
        known_hashes=known_hashes,
    )
    evaluation = None
    if evaluate is not None:
        evaluation = {"val_accuracy": float(evaluate(CheckpointReader(tmp).as_mapping()))}
    return {"stats": merged.as_dict(), "evaluation": evaluation, "parameters": p.model_dump(mode="json"),
            "hashes": merged.sha256}  # fmt: skip


def run_merge(cfg: MergeConfig, evaluate: Evaluate | None = None, progress: bool = True) -> dict[str, Any]:
    """Validate, stream the merge, and write an HF checkpoint with model card and resolved config.

    Args:
        cfg: the merge.
        evaluate: ``evaluate(state_dict) -> validation accuracy``; required by greedy soup
            (it picks the ingredients), otherwise applied to the merged weights and recorded.
        progress: show a progress bar counting tensors.

    Returns:
        The summary also written to ``merge_summary.json``: stats, parameters, input hashes,
        evaluation.

    Example:
        >>> from paint import MergeConfig, run_merge
        >>> summary = run_merge(MergeConfig(base="clip-b32/", models=[{"path": "ft/", "weight": 0.4}], output="m/"))  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    readers, params = validate_merge(cfg, evaluate)
    out = Path(cfg.output)
    with output_lock(out, "paint merge"):
        check_output(cfg)  # again under the lock: another merge may have written it since validation
        return _merge_into(out, cfg, readers, params, evaluate, progress, t0)


def _merge_into(
    out: Path,
    cfg: MergeConfig,
    readers: list[CheckpointReader],
    params: Any,
    evaluate: Evaluate | None,
    progress: bool,
    t0: float,
) -> dict[str, Any]:
    """The merge written atomically to ``out``: weights, carried files, resolved config, model card, summary."""
    labels = ["base"] + [f"model {i}" for i in range(len(cfg.models))]
    cache = HashCache(default_cache_dir()) if cfg.hash_inputs and cfg.hash_cache else None
    stamps = {str(f.resolve()): stamp(f) for r in readers for f in r.files} if cache else {}  # before any read
    known = {Path(p): h for p, h in cache.lookup(stamps.values()).items()} if cache else {}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if cfg.method == GREEDY_SOUP:
            assert evaluate is not None  # checked in validate_merge
            done = _soup_into(tmp, cfg, readers, evaluate)
        else:
            done = _stream_into(tmp, cfg, readers, params, evaluate, progress, known)
        hashes = input_hashes(readers, labels, {**known, **done["hashes"]}) if cfg.hash_inputs else []
        summary: dict[str, Any] = {
            "method": cfg.method,
            "parameters": done["parameters"],
            "weights": [m.weight for m in cfg.models],
            "stats": done["stats"],
            "carried_files": carry_files(Path(readers[0].path), tmp),
            "input_hashes": [{**row, "cached": Path(row["file"]).resolve() in known} for row in hashes],
            "evaluation": done["evaluation"],
            "output": str(out),
        }
        resolved = cfg.model_copy(update={"parameters": done["parameters"]})  # every method default filled in
        dump_config(resolved, tmp / CONFIG_NAME)
        write_text_atomic(tmp / "README.md", model_card(resolved, summary))
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        write_json_atomic(tmp / SUMMARY_NAME, summary)
    if cache is not None:
        remember_hashes(cache, stamps, hashes)
    return summary


def remember_hashes(cache: HashCache, stamps: Mapping[str, FileStamp], rows: list[dict[str, str]]) -> None:
    """Store the merge's input hashes in the cache; a cache that cannot be written only costs a warning."""
    hashed = {stamps[str(Path(r["file"]).resolve())]: r["sha256"] for r in rows}
    try:
        cache.store(hashed)
    except OSError as e:
        log.warning(
            "the sha256 cache %s could not be written (%s); the next merge hashes its inputs again", cache.path, e
        )

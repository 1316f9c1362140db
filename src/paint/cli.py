"""The ``paint`` command line: a thin shell over the Python API.

Each sub-command lives in ``paint.commands.<name>`` with two functions,
``register(parser)`` (arguments only, cheap imports) and ``run(args) -> int``. The table
below is the one explicit list of commands. User errors (:class:`PaintError`) and
operating-system errors (``OSError``: a full disk, a permission) become one line on stderr
and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help). Modules import heavy libraries only inside run().
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("paint.commands.demo", "PAINT end to end on the shipped model and synthetic world, offline"),
    "patch": ("paint.commands.patch", "fine-tune with the head frozen, sweep alpha, choose it, write the patched model"),
    "eval": ("paint.commands.evaluate", "zero-shot accuracy of a model on tasks"),
    "interpolate": ("paint.commands.interpolate", "write theta_alpha from a zero-shot and a fine-tuned checkpoint"),
    "tasks": ("paint.commands.tasks", "list the task catalog and built-ins; tasks show NAME for classes, templates, layout"),
    "merge": ("paint.commands.merge", "merge checkpoints (linear, task arithmetic, TIES, DARE, model stock), streamed"),
    "convert": ("paint.commands.convert", "convert an OpenAI CLIP / open_clip state dict to a Hugging Face CLIP checkpoint"),
    "pretrain": ("paint.commands.pretrain", "pretrain a small CLIP from scratch on the offline synthetic world"),
    "typographic": ("paint.commands.typographic", "typographic attacks: render label=/text= datasets, measure them, patch them"),
    "counting": ("paint.commands.counting", "patch counting and test on counts held out of fine-tuning (CLEVR-style)"),
    "triage": ("paint.commands.triage", "linear probe vs zero-shot per task: which tasks need patching, k-shot curve"),
    "multitask": ("paint.commands.multitask", "patch several tasks jointly, sequentially and in parallel; compare the modes"),
    "transfer": ("paint.commands.transfer", "broad transfer: patch on each task of a list, evaluate on all (matrix + heatmap)"),
    "metrics": ("paint.commands.metrics", "GradientSimilarity, BackwardKnowledgeTransfer and linear CKA of a patch run"),
}


def build_parser() -> argparse.ArgumentParser:
    from paint import __version__

    parser = argparse.ArgumentParser(prog="paint", description="Patch open-vocabulary image models in weight space.")
    parser.add_argument("--version", action="version", version=f"paint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).register(p)
        p.set_defaults(_module=module)
    return parser


def describe_os_error(err: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and a hint for the common ones."""
    import errno

    reason = err.strerror or str(err) or type(err).__name__
    where = f"{err.filename}: " if err.filename else ""
    hint = {errno.ENOSPC: "; free some space (or point output_dir/cache_dir elsewhere) and rerun with --resume",
            errno.EDQUOT: "; free some space and rerun with --resume",
            errno.EACCES: "; check the permissions of that path",
            errno.EROFS: "; choose a writable output_dir"}.get(err.errno or 0, "")
    return f"{where}{reason}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    from paint.errors import PaintError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except PaintError as e:
        print(f"paint {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, a path that is a file: the path and the reason, no traceback
        print(f"paint {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"paint {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``paint`` command line: a thin shell over the Python API.

Each sub-command lives in ``paint.commands.<name>`` with two functions,
``register(parser)`` (its arguments) and ``run(args) -> int``; only the module of the command being run
is imported. The table
below is the one explicit list of commands. User errors (:class:`PaintError`) and
operating-system errors (``OSError``: a full disk, a permission) become one line on stderr and exit code 2, with the library's API wording of a remedy
(``set allow_extrapolation``) turned into the flag the user can pass on this command.

Every computing command takes ``--threads`` (torch CPU threads; default ``auto``, see
:mod:`paint.runtime`). Config-driven commands read it after the config (flag > config
``threads:`` > auto); the others have it applied here, before ``run``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import re
import sys
from collections.abc import Sequence

from paint import __version__, runtime
from paint.errors import PaintError

# name -> (module, one-line help). A command's module is imported only when that command runs (build_parser).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("paint.commands.demo", "PAINT end to end on the shipped model and synthetic world, offline"),
    "patch": (
        "paint.commands.patch",
        "fine-tune with the head frozen, sweep alpha, choose it, write the patched model",
    ),
    "eval": (
        "paint.commands.evaluate",
        "zero-shot top-1/top-5, per-class accuracy and confusions of a model on any tasks",
    ),
    "interpolate": ("paint.commands.interpolate", "write theta_alpha from a zero-shot and a fine-tuned checkpoint"),
    "tasks": (
        "paint.commands.tasks",
        "list the task catalog and built-ins; tasks show NAME for classes, templates, layout",
    ),
    "merge": (
        "paint.commands.merge",
        "merge checkpoints (linear, task arithmetic, TIES, DARE, model stock, Iso-C/CTS, TSV-M), streamed",
    ),
    "convert": (
        "paint.commands.convert",
        "convert an OpenAI CLIP / open_clip state dict to a Hugging Face CLIP checkpoint",
    ),
    "pretrain": ("paint.commands.pretrain", "pretrain a small CLIP from scratch on the offline synthetic world"),
    "typographic": (
        "paint.commands.typographic",
        "typographic attacks: render label=/text= datasets, measure them, patch them",
    ),
    "counting": ("paint.commands.counting", "patch counting and test on counts held out of fine-tuning (CLEVR-style)"),
    "triage": ("paint.commands.triage", "linear probe vs zero-shot per task: which tasks need patching, k-shot curve"),
    "multitask": (
        "paint.commands.multitask",
        "patch several tasks jointly, sequentially and in parallel; compare the modes",
    ),
    "transfer": (
        "paint.commands.transfer",
        "broad transfer: patch on each task of a list, evaluate on all (matrix + heatmap)",
    ),
    "compare": (
        "paint.commands.compare",
        "fine-tuning recipes compared on one frontier, over seeds (paint compare --help lists them)",
    ),
    "scale": (
        "paint.commands.scale",
        "the scale study: PAINT on every model of a ladder, several seeds, with intervals (table + figure)",
    ),
    "metrics": (
        "paint.commands.metrics",
        "GradientSimilarity, BackwardKnowledgeTransfer and linear CKA of a patch run",
    ),
}


# Commands that compute nothing with torch: no --threads (and no torch import for a listing).
NO_THREADS = frozenset({"tasks"})

# (library wording, the args attribute of the flag, the wording with the flag): rewritten only on
# commands that have that flag, so the hint is something the user can do on this command line.
FLAG_HINTS: tuple[tuple[str, str, str], ...] = (
    ("set allow_extrapolation to extrapolate", "allow_extrapolation", "pass --allow-extrapolation to extrapolate"),
    ("set overwrite: true", "overwrite", "pass --overwrite"),
)
# "set sweep.allow_extrapolation: true" in a library message: a config remedy with a plain value.
_CONFIG_HINT = re.compile(r"(?<![-\w])set (?P<key>[a-z_][a-z0-9_.]*): (?P<value>true|false|-?\d[\w.]*)\b")


def cli_message(message: str, args: argparse.Namespace) -> str:
    """A library error message with its remedy phrased as this command's flags."""
    for api, dest, flag in FLAG_HINTS:
        if api in message and hasattr(args, dest):
            message = message.replace(api, flag)
    if hasattr(args, "set") and "--set" not in message:  # config fields named as YAML get the --set form beside them
        m = _CONFIG_HINT.search(message)
        if m:
            hint = f" (or --set {m['key']}={m['value']})"
            message = message[: m.end()] + hint + message[m.end() :]
    return message


def interrupted_message(command: str, args: argparse.Namespace) -> str:
    """What to tell a user after Ctrl-C: ``--resume`` only where this command has it."""
    if hasattr(args, "resume"):
        return f"paint {command}: interrupted; rerun the same command with --resume to continue"
    return f"paint {command}: interrupted"


def _add_threads(p: argparse.ArgumentParser) -> None:
    """--threads on ``p``, or on each of its sub-commands' parsers when it has some."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if subs:
        for child in subs[0].choices.values():
            _add_threads(child)
        return
    p.add_argument(
        "--threads",
        metavar="N|auto",
        help="torch CPU threads (default: the config's threads, else auto = idle cores; 1 on a busy machine)",
    )


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``paint`` parser; with ``only``, just that command's arguments are registered.

    A command's module (and what it imports) is loaded only when its arguments are registered,
    so ``paint patch ...`` imports the patch command alone and ``paint --help`` imports none.
    """
    parser = argparse.ArgumentParser(prog="paint", description="Patch open-vocabulary image models in weight space.")
    parser.add_argument("--version", action="version", version=f"paint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            continue
        importlib.import_module(module).register(p)
        if name not in NO_THREADS:
            _add_threads(p)
        p.set_defaults(_module=module)
    return parser


def command_in(argv: Sequence[str]) -> str | None:
    """The sub-command an argument list names (its first word that is one), or None."""
    return next((a for a in argv if a in COMMANDS), None)


def describe_os_error(err: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and a hint for the common ones."""
    reason = err.strerror or str(err) or type(err).__name__
    where = f"{err.filename}: " if err.filename else ""
    hint = {
        errno.ENOSPC: "; free some space (or point output_dir/cache_dir elsewhere) and rerun with --resume",
        errno.EDQUOT: "; free some space and rerun with --resume",
        errno.EACCES: "; check the permissions of that path",
        errno.EROFS: "; choose a writable output_dir",
    }.get(err.errno or 0, "")
    return f"{where}{reason}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=command_in(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        if args.command not in NO_THREADS and not hasattr(args, "set"):  # config commands apply it after the config
            # Announced with the first progress output, so a user error before any work stays one line.
            runtime.apply_threads(getattr(args, "threads", None), defer=True)
        code = int(importlib.import_module(args._module).run(args) or 0)
        runtime.announce_pending()
        return code
    except PaintError as e:
        runtime.drop_pending()
        print(f"paint {args.command}: error: {cli_message(str(e), args)}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, a path that is a file: the path and the reason, no traceback
        print(f"paint {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        runtime.announce_pending()
        print(interrupted_message(args.command, args), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

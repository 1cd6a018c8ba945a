"""The ``fiftyone-ssa`` command line: one module per subcommand, each thin over the library.

Each subcommand module exposes ``add_parser(subparsers)``, which registers its parser and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

_MODELS_DIR_HELP = (
    "directory holding model weights (default: $FIFTYONE_SSA_MODELS_DIR, else "
    "<FiftyOne model zoo dir>/fiftyone-ssa)"
)

# Subcommand modules, in the order ``--help`` lists them.
_COMMAND_MODULES = ["run", "engine", "eval", "review", "sa1b", "models", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fiftyone-ssa",
        description="Semantic Segment Anything for FiftyOne: semantic labels for SAM masks.",
    )
    parser.add_argument("--models-dir", default=None, help=_MODELS_DIR_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"fiftyone_ssa.cli.{name}").add_parser(subparsers)
    # ``--models-dir`` is also accepted after the subcommand (``fiftyone-ssa run ... --models-dir``,
    # ``fiftyone-ssa models list --models-dir ...``).
    _accept_models_dir(subparsers)
    return parser


def _accept_models_dir(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``--models-dir`` to every (nested) subcommand parser that lacks it."""
    for subparser in set(subparsers.choices.values()):
        if "--models-dir" not in subparser._option_string_actions:
            subparser.add_argument("--models-dir", default=argparse.SUPPRESS, help=_MODELS_DIR_HELP)
        for action in subparser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_models_dir(action)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (whitespace runs, newlines included, collapsed)."""
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        sys.exit(2)
    if args.models_dir:
        from fiftyone_ssa.models.weights import set_models_dir

        set_models_dir(args.models_dir)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
    except BrokenPipeError:
        # The reader went away (`fiftyone-ssa models list | head`): nothing is wrong to report.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except (ValueError, OSError, RuntimeError, ImportError) as err:
        # Wrong use, missing weights and unreadable files end with one clear line, not a
        # traceback (also what --fail-fast stops with).
        print(f"fiftyone-ssa {args.command}: error: {one_line(err)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        resumable = args.command in ("run", "engine") and not args.no_resume
        hint = " (labels written so far are kept; the same command resumes)" if resumable else ""
        print(f"fiftyone-ssa {args.command}: interrupted{hint}", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)

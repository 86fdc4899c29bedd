"""Command line: ``eft-local [chat|run|serve|score|download|models|rpc-server]``.

This package parses arguments and launches the front ends; each subcommand lives in its own
module with a ``register(subparsers)``. Errors are one line, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from eft_local.cli import chat, models, rpc, run, score, serve
from eft_local.errors import UserError

COMMANDS = (run, chat, models, rpc, serve, score)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the fix."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="eft-local", description="Emulated fine-tuning on llama.cpp: a large base model steered by a small chat model."
    )
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["chat", *argv]
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    _setup_logging(getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"eft-local: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eft-local: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or a llama.cpp failure: still one line, details on --verbose
        if getattr(args, "verbose", False):
            raise
        print(f"eft-local: error: unexpected {type(e).__name__}: {e} (run with --verbose for details)", file=sys.stderr)
        return 1


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("eft_local.llama")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.ERROR)

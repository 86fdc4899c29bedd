"""Command line: ``eft-local [chat|run|serve|score|download|models|rpc-server]``.

This package parses arguments and launches the front ends; each subcommand lives in its own
module with a ``register(subparsers)``. Errors are one line, never a traceback; so is Ctrl+C,
from this module's first statement to the process's end (exit 130). Subcommands are imported
inside ``main``, so an interrupt during those imports is caught there too.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from collections.abc import Sequence


def say(message: str) -> None:
    """``eft-local: {message}`` on stderr as one line, whatever the text (a byte that isn't UTF-8
    from argv is shown escaped, never a UnicodeEncodeError)."""
    text = f"eft-local: {message}".replace("\n", " ").encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed: the exit status still says it
        pass


_interrupt_said = False


def interrupted(detail: str = "") -> int:
    """The one line for Ctrl+C (said once per process), and its exit status."""
    global _interrupt_said
    if not _interrupt_said:
        _interrupt_said = True
        say(f"interrupted; {detail}" if detail else "interrupted")
    return 130


def _exit_at_once(signum: int = 0, frame: object = None) -> None:
    """Ctrl+C where no ``except`` can catch it (imports before ``main``, the exit after it)."""
    _leave(interrupted())


def _leave(code: int) -> None:
    """Exit now with ``code``, stdout flushed. After an interrupt this is the only sure way to
    130: a KeyboardInterrupt that passed through code run from a string (dataclasses,
    namedtuple: ``exec``) makes Python end the process by SIGINT even once it was handled."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


def _uncaught(kind: type[BaseException], value: BaseException, tb: object) -> None:
    if issubclass(kind, KeyboardInterrupt):
        _exit_at_once()
    _previous_hook(kind, value, tb)


_previous_hook, sys.excepthook = sys.excepthook, _uncaught


def _quiet_after_exit_handlers() -> None:
    """Registered first, so it runs after every other exit handler: from here on the interpreter
    resets Python-level signal handlers to the default, and a Ctrl+C would end a finished command
    by SIGINT (status -2, no line). The command is done by now, so the interrupt is ignored."""
    if signal.getsignal(signal.SIGINT) is _exit_at_once:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


atexit.register(_quiet_after_exit_handlers)


COMMANDS = ("run", "chat", "models", "rpc", "serve", "score")  # modules of eft_local.cli, each with register()


def build_parser():
    import argparse
    from importlib import import_module

    class Parser(argparse.ArgumentParser):
        """argparse, but a usage mistake is one line naming the fix."""

        def error(self, message: str) -> None:  # type: ignore[override]
            self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    parser = Parser(
        prog="eft-local", description="Emulated fine-tuning on llama.cpp: a large base model steered by a small chat model."
    )
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    for name in COMMANDS:
        import_module(f"eft_local.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Run as the program (``argv`` None), an interrupted command ends the
    process at once (``_leave``), and a Ctrl+C after it returns, while the interpreter exits,
    still ends it with the one line and 130."""
    global _interrupt_said
    _interrupt_said = False  # per command (tests call main many times in one process)
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt as e:
        code = interrupted(str(e))
    if argv is None:
        signal.signal(signal.SIGINT, _exit_at_once)
        if code == 130:  # interrupted (download says so its own way)
            _leave(code)
    return code


def _main(argv: list[str]) -> int:
    from eft_local.errors import UserError
    from eft_local.settings import advice

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
        say(f"error: {advice(e)}")
        return 2
    except Exception as e:  # a bug or a llama.cpp failure: still one line, details on --verbose
        if getattr(args, "verbose", False):
            raise
        say(f"error: unexpected {type(e).__name__}: {e} (run with --verbose for details)")
        return 1


def _setup_logging(verbose: bool) -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("eft_local.llama")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.ERROR)

"""Command line for llama.cpp RPC: ``--rpc ROLE=HOST:PORT[,HOST:PORT…]`` and ``eft-local rpc-server``."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

from eft_local.errors import UserError
from eft_local.llama.rpc import DEFAULT_PORT, SPEC_SYNTAX, parse_rpc_spec
from eft_local.server.hosts import is_loopback


class _RpcAction(argparse.Action):
    """Each ``--rpc ROLE=…`` adds its servers to ``args.rpc`` (role -> [endpoint, …])."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            role, endpoints = parse_rpc_spec(values)
        except UserError as e:
            parser.error(f"argument --rpc: {str(e).removeprefix('--rpc ')}")
        current = dict(getattr(namespace, self.dest, None) or {})
        current[role] = current.get(role, []) + endpoints
        setattr(namespace, self.dest, current)


def add_rpc_args(group) -> None:
    group.add_argument(
        "--rpc",
        action=_RpcAction,
        default={},
        metavar=SPEC_SYNTAX,
        help="put ROLE's layers on llama.cpp RPC servers (`eft-local rpc-server` on those machines); "
        "repeatable, e.g. --rpc base=10.0.0.5:50052",
    )


def rpc_endpoints(args: argparse.Namespace, defaults: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """Role -> endpoints: the profile's ``rpc`` table, with ``--rpc ROLE=…`` replacing that role's
    servers (repeating ``--rpc`` for one role adds servers). A clear UserError without RPC support."""
    from eft_local.llama.rpc import BUILD_HINT, supports_rpc

    result: dict[str, list[str]] = {r: list(e) for r, e in ((defaults or {}).get("rpc") or {}).items()}
    result.update({r: list(e) for r, e in (getattr(args, "rpc", None) or {}).items()})
    result = {r: e for r, e in result.items() if e}
    if result and not supports_rpc():
        raise UserError(BUILD_HINT)
    return result


# -- eft-local rpc-server ----------------------------------------------------------------------------
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rpc-server", help="serve this machine's CPU/GPU to other eft-local or llama.cpp clients (llama.cpp RPC)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="IPv4 address (or host name) to listen on; default 127.0.0.1. RPC has no authentication",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("--threads", type=int, help="CPU threads for computing (default: half the logical CPUs)")
    p.add_argument(
        "--cache", metavar="DIR", help="cache received tensors in DIR, so a reload of the same model skips the transfer"
    )
    p.add_argument(
        "--no-restart",
        action="store_true",
        help="serve in this process: a crash ends it (for systemd or another supervisor); "
        "by default a parent process restarts the server after a crash",
    )
    p.add_argument("--supervised", type=int, metavar="PARENT_PID", help=argparse.SUPPRESS)  # the child a parent restarts
    p.set_defaults(func=cmd_rpc_server)


def cmd_rpc_server(args: argparse.Namespace) -> int:
    from eft_local.llama import rpc
    from eft_local.llama.adapter import default_threads, init_backend

    if args.supervised:
        from eft_local.cli.rpc_supervisor import become_supervised_child

        become_supervised_child(args.supervised)
    if not rpc.supports_rpc():
        raise UserError(rpc.BUILD_HINT)
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be from 1 to 65535, got {args.port}")
    threads = args.threads or default_threads()
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    host = rpc.check_bindable(args.host, args.port)
    cache = _cache_dir(args.cache)
    if not is_loopback(host) and not args.supervised:
        print(
            f"eft-local: warning: listening on {host}:{args.port}. The llama.cpp RPC protocol has no authentication "
            "and no encryption: anyone who can reach this port can run computations on this machine, read what "
            "clients send, and crash the server. Use it only on a network where you trust every host.",
            file=sys.stderr,
            flush=True,
        )
    if not args.supervised and not args.no_restart:
        # the parent touches no device (a GPU context here would only take memory): the child lists them
        print(
            f"eft-local rpc-server on {host}:{args.port}, {threads} thread(s){', cache ' + cache if cache else ''}; "
            "if it crashes, it restarts; Ctrl+C stops it",
            file=sys.stderr,
            flush=True,
        )
        return _supervise(host, args.port, threads, cache)
    init_backend()
    devices = rpc.server_devices()
    start = lambda: rpc.start_server(host, args.port, threads=threads, cache_dir=cache, devices=devices)  # noqa: E731
    if args.supervised:  # the parent said everything and restarts this process after a crash
        _line_buffered_stdout()
        return _serve(start, quiet=True)
    print(
        f"eft-local rpc-server on {host}:{args.port}, {threads} thread(s), devices: {', '.join(rpc.device_names(devices))}"
        f"{', cache ' + cache if cache else ''}; a crash ends it; Ctrl+C stops it",
        file=sys.stderr,
        flush=True,
    )
    return _serve(start)


def _supervise(host: str, port: int, threads: int, cache: str | None) -> int:
    from eft_local.cli.rpc_supervisor import Supervisor

    child = [sys.executable, "-m", "eft_local", "rpc-server", "--host", host, "--port", str(port)]
    child += ["--threads", str(threads), *(["--cache", cache] if cache else []), "--supervised", str(os.getpid())]
    return Supervisor(child, port).run()


def _cache_dir(raw: str | None) -> str | None:
    if not raw:
        return None
    from eft_local.models.profiles import expand_user

    path = expand_user(raw, "--cache")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--cache {raw}: {e.strerror or e}") from None
    return str(path)


def _serve(start, quiet: bool = False) -> int:
    """Run the blocking C server on a daemon thread so Ctrl+C reaches Python and exits cleanly."""
    thread = threading.Thread(target=start, name="rpc-server", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        if not quiet:
            print("eft-local: rpc-server stopped", file=sys.stderr, flush=True)
        _exit_now(0)
    raise UserError("the RPC server stopped: llama.cpp could not start it (see the lines above)")


def _exit_now(code: int) -> None:
    """Leave without running ggml's static destructors under the still-blocked server thread."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _line_buffered_stdout() -> None:
    """llama.cpp prints "Accepted client connection" with printf: into a pipe that is block
    buffered and lost on a crash. Line buffering lets the parent name each peer as it comes."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, ValueError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.setvbuf(ctypes.c_void_p.in_dll(libc, "stdout"), None, 1, 0)  # _IOLBF

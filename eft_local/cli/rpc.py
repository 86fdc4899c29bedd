"""Command line for llama.cpp RPC: ``--rpc ROLE=HOST:PORT[,HOST:PORT…]`` and ``eft-local rpc-server``."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Mapping
from typing import Any

from eft_local.errors import UserError
from eft_local.llama.rpc import DEFAULT_PORT, SPEC_SYNTAX, parse_rpc_spec


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
    p.set_defaults(func=cmd_rpc_server)


def cmd_rpc_server(args: argparse.Namespace) -> int:
    from eft_local.llama import rpc
    from eft_local.llama.adapter import default_threads, init_backend

    if not rpc.supports_rpc():
        raise UserError(rpc.BUILD_HINT)
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be from 1 to 65535, got {args.port}")
    threads = args.threads or default_threads()
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    host = rpc.check_bindable(args.host, args.port)
    cache = _cache_dir(args.cache)
    init_backend()
    devices = rpc.server_devices()
    if not host.startswith("127."):
        print(
            f"eft-local: warning: listening on {host}:{args.port}; llama.cpp RPC has no authentication or "
            "encryption: anyone who can reach this port can use this machine. Use it on a trusted network only.",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"eft-local rpc-server on {host}:{args.port}, {threads} thread(s), devices: {', '.join(rpc.device_names(devices))}"
        f"{', cache ' + cache if cache else ''}; Ctrl+C stops it",
        file=sys.stderr,
        flush=True,
    )
    return _serve(lambda: rpc.start_server(host, args.port, threads=threads, cache_dir=cache, devices=devices))


def _cache_dir(raw: str | None) -> str | None:
    if not raw:
        return None
    from pathlib import Path

    path = Path(raw).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--cache {raw}: {e.strerror or e}") from None
    return str(path)


def _serve(start) -> int:
    """Run the blocking C server on a daemon thread so Ctrl+C reaches Python and exits cleanly."""
    thread = threading.Thread(target=start, name="rpc-server", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        print("eft-local: rpc-server stopped", file=sys.stderr, flush=True)
        _exit_now(0)
    raise UserError("the RPC server stopped: llama.cpp could not start it (see the lines above)")


def _exit_now(code: int) -> None:
    """Leave without running ggml's static destructors under the still-blocked server thread."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

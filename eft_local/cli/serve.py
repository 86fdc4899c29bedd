"""``eft-local serve``: load the models once, then answer OpenAI-style HTTP requests."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path

from eft_local.cli.options import (
    add_setting,
    check_delta_names,
    default_parallel,
    load_engine,
    model_args,
    prepare,
    sampling_args,
)
from eft_local.errors import UserError
from eft_local.settings import parse_variant

LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API (chat/completions, completions, models)")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 = every interface)")
    g.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 = any free port)")
    g.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1 requests")
    g.add_argument(
        "--model-name", metavar="NAME", help="model id clients use (default: the profile name, or one made from the files)"
    )
    g.add_argument(
        "--content-tokens",
        choices=("special", "plain"),
        default=None,
        help="how text inside messages and prompts is tokenized: 'special' parses control-token text like "
        "<|im_start|> (what llama.cpp's server does), 'plain' keeps it text so a client can't forge a "
        "turn (default: special on loopback, plain on any other address)",
    )
    g.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=V,...",
        help="also serve the mix with these settings as model NAME (KEY as in --grid: alpha, beta, weight.NAME, "
        "temperature, top_p, seed, ...; repeatable; adds to the profile's variants)",
    )
    add_setting(g, "parallel")
    g.add_argument(
        "--max-queue",
        type=int,
        default=16,
        metavar="N",
        help="requests that may wait while one generates (default 16; more get 503)",
    )
    model_args(p)
    sampling_args(p)
    p.set_defaults(func=cmd_serve)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def served_variants(args: argparse.Namespace, settings: dict, paths: dict[str, Path]) -> dict[str, dict]:
    """The profile's variants, then ``--variant`` flags (a flag replaces a same-named one)."""
    variants = dict(settings.get("variants", {}))
    for text in args.variant:
        name, layer = parse_variant(text)
        variants[name] = layer
    for name, layer in variants.items():
        check_delta_names(layer.get("weights", {}), paths, f"variant {name}: weight.{{}}")
    return variants


def model_name(profile: str | None, paths: dict[str, Path]) -> str:
    if profile:
        return profile
    return f"eft:{Path(paths['base']).stem}+{Path(paths['chat']).stem}"


def bind(host: str, port: int) -> socket.socket:
    """Listen before anything slow happens, so a busy port is one clear line, not a uvicorn log."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"cannot resolve --host {host}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_queue < 0:
        raise UserError(f"--max-queue must be >= 0, got {args.max_queue}")
    try:
        import uvicorn

        from eft_local.engine.session import Session
        from eft_local.server.app import ServerOptions, create_app
    except ImportError as e:  # pragma: no cover - broken install
        raise UserError(f"eft-local serve needs fastapi and uvicorn ({e}); reinstall eft-local") from None

    paths, settings, profile = prepare(args)
    name = args.model_name or model_name(profile, paths)
    variants = served_variants(args, settings, paths)
    if name in variants:
        raise UserError(f"--variant {name}: the mix itself is served as {name!r}; name the variant differently")
    parallel = settings["parallel"] or default_parallel(settings)
    sock = bind(args.host, args.port)
    if not is_loopback(args.host) and not args.api_key:
        print(
            f"eft-local: warning: listening on {args.host} without --api-key: anyone who can reach this port can use the models",
            file=sys.stderr,
            flush=True,
        )
    try:
        engine = load_engine(paths, settings, n_seq=parallel)
    except BaseException:
        sock.close()
        raise
    plain = args.content_tokens == "plain" or (args.content_tokens is None and not is_loopback(args.host))
    session = Session(engine, prompt_style=settings["prompt_style"], system_prompt=settings["system_prompt"], plain_content=plain)
    if not engine.chat.chat_template:
        print(
            f"eft-local: warning: {paths['chat']} has no chat template: only /v1/completions (raw prompts) will work",
            file=sys.stderr,
            flush=True,
        )
    options = ServerOptions(
        model_name=name, settings=settings, api_key=args.api_key, max_queue=args.max_queue, parallel=parallel, variants=variants
    )
    app = create_app(session, options)

    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    uv_config = uvicorn.Config(
        app,
        log_level="info" if args.verbose else "warning",
        access_log=bool(args.verbose),
        timeout_graceful_shutdown=3,
        lifespan="on",
    )
    server = _Server(uv_config, f"eft-local: serving {name} at http://{shown}:{port}/v1 (OpenAI-compatible; Ctrl+C stops)")
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the Ctrl+C it caught
        pass
    finally:
        sock.close()
        app.state.worker.stop()  # (already done by the app's shutdown, unless a second Ctrl+C forced the exit)
        session.close()
    print("eft-local: server stopped", file=sys.stderr)
    return 0


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, plus one readiness line once the socket accepts requests."""

        def __init__(self, config, ready_line: str) -> None:
            super().__init__(config)
            self.ready_line = ready_line

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                print(self.ready_line, file=sys.stderr, flush=True)

    return Server


def _Server(config, ready_line: str):
    return _server_class()(config, ready_line)

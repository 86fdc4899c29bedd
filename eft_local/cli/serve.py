"""``eft-local serve``: load the models once, then answer OpenAI-style HTTP requests."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import string
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from eft_local.cli.options import (
    add_setting,
    check_delta_names,
    default_parallel,
    load_engine,
    model_args,
    prepare,
    sampling_args,
)
from eft_local.errors import UserError, check_text
from eft_local.server.hosts import is_loopback
from eft_local.settings import parse_variant

if TYPE_CHECKING:  # the server's modules load only when `serve` runs (`eft-local --help` stays quick)
    import uvicorn

    from eft_local.engine.session import Session

API_KEY_ENV = "EFT_LOCAL_API_KEY"
MAX_KEY_FILE_BYTES = 4096
SHUTDOWN_GRACE_SECONDS = 10  # after the engine stopped, answers still being written may take this long (a second signal: none)


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API (chat/completions, completions, models)")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 = every interface)")
    g.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 = any free port)")
    keys = g.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key", metavar="KEY", help=f"require 'Authorization: Bearer KEY' on /v1 requests (or set {API_KEY_ENV})"
    )
    keys.add_argument("--api-key-file", metavar="PATH", help="read the API key from this file (keeps it out of `ps`)")
    g.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept requests whose Host header is NAME (repeatable; '*' = any). Default: localhost, "
        "loopback addresses and the address the server is bound to",
    )
    g.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. http://localhost:3000; '*' = any) call the API: CORS for them "
        "(repeatable). Default: requests from any web page are refused",
    )
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


def api_key(args: argparse.Namespace, environ: dict[str, str] | None = None) -> str | None:
    """The key from --api-key, --api-key-file or $EFT_LOCAL_API_KEY (in that order), checked:
    a key given but empty (an unset shell variable) must not silently turn authentication off."""
    environ = os.environ if environ is None else environ
    if args.api_key is not None:
        key, where = args.api_key, "--api-key"
    elif args.api_key_file is not None:
        key, where = _read_key_file(args.api_key_file), f"--api-key-file {args.api_key_file}"
    elif API_KEY_ENV in environ:
        key, where = environ[API_KEY_ENV], API_KEY_ENV
    else:
        return None
    if not key.strip():
        raise UserError(f"{where} is empty: give a key, or leave it out to serve without authentication")
    allowed = set(string.ascii_letters + string.digits + string.punctuation)
    if not set(key) <= allowed:
        raise UserError(f"{where}: the key must be printable ASCII without spaces (it travels in an HTTP header)")
    return key


def _read_key_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise UserError(f"cannot read --api-key-file {path}: {e.strerror or e}") from None
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise UserError(f"--api-key-file {path} is larger than {MAX_KEY_FILE_BYTES} bytes: is it the right file?")
    try:
        return raw.decode("utf-8").strip()  # (a trailing newline is not part of the key)
    except UnicodeDecodeError:
        raise UserError(f"--api-key-file {path}: the key must be printable ASCII without spaces") from None


def access(args: argparse.Namespace):
    """The Host/Origin policy of ``guard`` for these flags (a bad --allow-origin is a UserError)."""
    from eft_local.server.guard import access_policy, check_host_option, check_origin_option

    try:
        origins = [check_origin_option(o) for o in args.allow_origin]
        hosts = [check_host_option(h) for h in args.allowed_host]
    except ValueError as e:
        raise UserError(str(e)) from None
    return access_policy(args.host, hosts, origins)


def cmd_serve(args: argparse.Namespace) -> int:
    from eft_local.llama import template_sandbox
    from eft_local.server.app import ServerOptions, create_app

    _check_flags(args)
    key = api_key(args)
    policy = access(args)
    paths, settings, profile = prepare(args)
    name = args.model_name or model_name(profile, paths)
    variants = served_variants(args, settings, paths)
    if name in variants:
        raise UserError(f"--variant {name}: the mix itself is served as {name!r}; name the variant differently")
    parallel = settings["parallel"] or default_parallel(settings)
    sock = bind(args.host, args.port)  # listen before minutes go into loading: a busy port fails now
    if not is_loopback(args.host) and not key:
        _warn(f"listening on {args.host} without --api-key: anyone who can reach this port can use the models")
    try:
        session = _session(args, paths, settings, parallel)
    except BaseException:
        sock.close()
        raise
    options = ServerOptions(
        model_name=name, settings=settings, api_key=key, max_queue=args.max_queue, parallel=parallel, variants=variants
    )
    app = create_app(session, options)
    template_sandbox.warm()  # the template renderer's process starts now, not on the first request
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    ready = f"eft-local: serving {name} at http://{shown}:{port}/v1 (OpenAI-compatible; Ctrl+C stops)"
    server = _Server(_uvicorn_config(app, policy, args.verbose), ready, app.state.worker)
    # The server's own handler from here on, left in place: a signal before uvicorn's handlers are in
    # place stops it the same way, and one after (a second Ctrl+C while the models are freed, or as the
    # process exits) is no KeyboardInterrupt: no traceback, no death by SIGINT.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, server.handle_exit)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        app.state.worker.stop()  # (already done by the app's shutdown, unless a second Ctrl+C forced the exit)
        session.close()
    print("eft-local: server stopped", file=sys.stderr)
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    texts = {"--model-name": [args.model_name], "--host": [args.host], "--allowed-host": args.allowed_host}
    texts.update({"--allow-origin": args.allow_origin, "--variant": args.variant})
    for flag, values in texts.items():  # (clients see these: a byte that isn't UTF-8 would be a 500 on every request)
        for value in values:
            if value is not None:
                check_text(value, flag)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_queue < 0:
        raise UserError(f"--max-queue must be >= 0, got {args.max_queue}")


def _warn(message: str) -> None:
    print(f"eft-local: warning: {message}", file=sys.stderr, flush=True)


def _session(args: argparse.Namespace, paths: dict[str, Path], settings: dict, parallel: int) -> Session:
    """The loaded models behind one Session; message text stays plain beyond loopback unless asked."""
    from eft_local.engine.session import Session

    engine = load_engine(paths, settings, n_seq=parallel)
    plain = args.content_tokens == "plain" or (args.content_tokens is None and not is_loopback(args.host))
    if not engine.chat.chat_template:
        _warn(f"{Path(paths['chat']).name} has no chat template: only /v1/completions (raw prompts) will work")
    return Session(engine, prompt_style=settings["prompt_style"], system_prompt=settings["system_prompt"], plain_content=plain)


def _uvicorn_config(app, policy, verbose: bool) -> uvicorn.Config:
    """uvicorn behind the Host/Origin guard, with the bounded connection protocol."""
    import uvicorn

    from eft_local.server.connections import ConnectionLimits, connection_cap, guarded_protocol
    from eft_local.server.guard import Guard

    limits = ConnectionLimits(max_connections=connection_cap(ConnectionLimits.max_connections))
    return uvicorn.Config(
        Guard(app, policy),
        http=guarded_protocol(limits),
        log_level="info" if verbose else "warning",
        access_log=verbose,
        timeout_keep_alive=int(limits.keep_alive_seconds),
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        lifespan="on",
    )


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, plus: one readiness line once the socket accepts requests; SIGINT and SIGTERM
        both stop it cleanly (every running answer ends with a 503 or a final error event, the
        engine thread stops, the command returns 0: the signal is not re-raised)."""

        def __init__(self, config, ready_line: str, worker) -> None:
            super().__init__(config)
            self.ready_line = ready_line
            self.worker = worker

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                print(self.ready_line, file=sys.stderr, flush=True)

        def handle_exit(self, sig: int, frame) -> None:
            if self.should_exit and sig in (signal.SIGINT, signal.SIGTERM):
                self.force_exit = True  # a second signal: stop waiting for answers
            self.should_exit = True

        async def shutdown(self, sockets=None) -> None:
            for server in self.servers:  # no new connections while the answers end
                server.close()
            for conn in list(self.server_state.connections):
                if getattr(conn, "receiving", lambda: False)():  # still sending its request: nothing to answer
                    conn.drop()
            await asyncio.to_thread(self.worker.stop)
            await super().shutdown(sockets)
            if self.force_exit:
                await self._end_the_rest()

        async def _end_the_rest(self) -> None:
            """After a second signal uvicorn stops waiting and skips the app's shutdown; left so,
            asyncio cancels the tasks still running at exit, each with a traceback. So: cut the
            connections still being written to (their tasks then end at once), then shut the app down."""
            for conn in list(self.server_state.connections):
                conn.transport.abort()
            for _ in range(40):  # (at most 2 s)
                if not self.server_state.tasks:
                    break
                await asyncio.sleep(0.05)
            await self.lifespan.shutdown()

    return Server


def _Server(config, ready_line: str, worker):
    return _server_class()(config, ready_line, worker)

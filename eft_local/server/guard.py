"""Who may drive the server from a web browser: Host, Origin, Content-Type and CORS (issue 15 item 1).

A web page can make a browser send requests to 127.0.0.1 — by DNS rebinding (the page's own
name starts resolving to 127.0.0.1, so the ``Host`` header names the page's domain) or by a
"simple request" (a cross-origin POST with ``Content-Type: text/plain`` goes out without a
CORS preflight, carrying an ``Origin`` header). So, before the API sees a request:

- ``Host`` must name this server: a loopback name or address (``server.hosts``), the
  address the server is bound to (any IP address when it is bound to every interface, and the
  machine's host name), or a name given with ``--allowed-host`` (``*``: any);
- a request that carries an ``Origin`` is refused unless ``--allow-origin`` names that origin
  (``*``: any); for allowed origins, CORS preflights are answered and CORS headers set;
- a POST must say ``Content-Type: application/json`` (which a browser can only send after a
  successful preflight).

Refusals are OpenAI-shaped: 403 (host, origin) and 415 (content type).
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from eft_local.server.hosts import ip_of, is_loopback
from eft_local.server.request import ApiError

CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type"
CORS_MAX_AGE = "600"
_TOKEN_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")


@dataclass(frozen=True)
class AccessPolicy:
    hosts: frozenset[str]  # lower-case names (and IP texts) a Host header may carry
    any_ip: bool = False  # bound to every interface: any IP literal names this server
    any_host: bool = False  # --allowed-host '*'
    origins: frozenset[str] = frozenset()  # normalised origins; '*' = any

    def host_allowed(self, host: str | None) -> bool:
        if host is None or self.any_host:  # no Host: not something a browser sends
            return True
        name = host_name(host)
        if name is None:
            return False
        if name in self.hosts or is_loopback(name):
            return True
        return self.any_ip and ip_of(name) is not None

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.origins or normalise_origin(origin) in self.origins


def access_policy(bound_host: str, allowed_hosts: Iterable[str] = (), allow_origins: Iterable[str] = ()) -> AccessPolicy:
    """The policy for a server bound to ``bound_host`` (``--host``), plus the user's additions."""
    hosts = {h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip()}
    bound = bound_host.strip("[]").lower()
    ip = ip_of(bound)
    any_ip = ip is not None and ip.is_unspecified
    if any_ip:
        hosts.add(socket.gethostname().lower())
    elif bound:
        hosts.add(bound)
    return AccessPolicy(
        hosts=frozenset(hosts - {"*"}),
        any_ip=any_ip,
        any_host="*" in hosts,
        origins=frozenset(o if o.strip() == "*" else normalise_origin(o) for o in allow_origins),
    )


def host_name(host: str) -> str | None:
    """The name part of a Host header (``[::1]:8080`` -> ``::1``), or None when it is malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not re.fullmatch(r":\d{1,5}", host[end + 1 :])):
            return None
        return host[1:end]
    name, _, port = host.partition(":")
    if port and not port.isdigit() or not name:
        return None
    return name.rstrip(".")


def normalise_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


_HOST = r"(?:\[[0-9a-f:.%a-z]+\]|[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?)"  # a DNS name, an IPv4 or a [bracketed IPv6]


def check_origin_option(origin: str) -> str:
    """An --allow-origin value: '*' or exactly what a browser sends, scheme://host[:port]; a
    ValueError naming the flag for anything that could never match (a path, a pattern such as
    ``http://*.example.com``) and for ``null`` (sent by sandboxed iframes, file:// pages and
    redirects: any page can make its requests carry it, so allowing it would allow every page)."""
    o = normalise_origin(origin)
    if o == "*":
        return o
    if o == "null":
        raise ValueError(
            "--allow-origin null would let any web page in (sandboxed iframes, file:// pages and redirects "
            "all send 'Origin: null'); it is refused: serve the page from an http(s) origin and allow that"
        )
    if "*" in o:
        raise ValueError(f"--allow-origin takes exact origins, not patterns ('*' alone allows every page), got {origin!r}")
    if not re.fullmatch(rf"[a-z][a-z0-9+.-]*://{_HOST}(?::\d{{1,5}})?", o):
        raise ValueError(
            f"--allow-origin takes '*' or an origin such as http://localhost:3000 (scheme://host[:port]), got {origin!r}"
        )
    return o


def check_host_option(host: str) -> str:
    """An --allowed-host value: '*' or a host name or address as the Host header names it, without
    a port (the port is never compared: any port of an allowed name is allowed); a ValueError
    for a port, a scheme, a path or a pattern, which would never match."""
    name = host.strip().lower().rstrip(".")
    if name == "*":
        return name
    shown = "--allowed-host takes a host name or address such as my.box or 192.168.1.5 (any port)"
    if "://" in name or "/" in name:
        raise ValueError(f"{shown}, not a URL, got {host!r}")
    if "*" in name:
        raise ValueError(f"{shown}; patterns are not supported ('*' alone allows every name), got {host!r}")
    if ip_of(name) is None and ":" in name:
        bare = host_name(name)
        hint = f"; use {bare}" if bare else ""
        raise ValueError(f"{shown}, without a port (the port is not checked){hint}, got {host!r}")
    if not re.fullmatch(_HOST, name if ip_of(name) is None or name.startswith("[") else f"[{name}]"):
        raise ValueError(f"{shown}, got {host!r}")
    return name.strip("[]")


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json"


class Guard:
    """ASGI middleware enforcing an ``AccessPolicy`` in front of ``app``."""

    def __init__(self, app: Any, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers: dict[str, list[str]] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1"), []).append(v.decode("latin-1"))
        refusal, cors = self._check(scope["method"], headers)
        if refusal is not None:
            return await _send_error(send, refusal, cors)
        if cors and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            return await _send_preflight(send, cors, headers.get("access-control-request-headers", [""])[0])
        if not cors:
            return await self.app(scope, receive, send)

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_cors_headers(cors)]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _check(self, method: str, headers: dict[str, list[str]]) -> tuple[ApiError | None, str | None]:
        """(a refusal or None, the origin to answer with CORS headers or None)."""
        hosts = headers.get("host", [])
        if len(hosts) > 1 or not self.policy.host_allowed(hosts[0] if hosts else None):
            shown = (hosts[0] if hosts else "")[:100]
            return ApiError(
                403,
                f"Host {shown!r} does not name this server; start it with --allowed-host NAME to accept that name",
                code="host_not_allowed",
                type="permission_error",
            ), None
        origins = headers.get("origin", [])
        if origins:
            origin = origins[0]
            if len(origins) > 1 or not self.policy.origin_allowed(origin):
                return ApiError(
                    403,
                    f"requests from origin {origin[:100]!r} are not allowed; start the server with --allow-origin ORIGIN to allow it",
                    code="origin_not_allowed",
                    type="permission_error",
                ), None
        cors = origins[0] if origins else None
        if method == "POST" and not _is_json(headers.get("content-type", [None])[0]):
            got = headers.get("content-type", ["none"])[0][:100]
            return ApiError(
                415,
                f"the request body must be JSON sent with 'Content-Type: application/json' (got {got!r})",
                code="unsupported_media_type",
            ), cors
        return None, cors


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]


async def _send_error(send: Any, e: ApiError, cors: str | None) -> None:
    body = json.dumps(e.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += _cors_headers(cors) if cors else []
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_preflight(send: Any, origin: str, requested: str) -> None:
    allow = requested if requested and len(requested) < 500 and _TOKEN_LIST.match(requested.strip()) else CORS_HEADERS
    headers = [
        *_cors_headers(origin),
        (b"access-control-allow-methods", CORS_METHODS.encode()),
        (b"access-control-allow-headers", allow.strip().encode("latin-1")),
        (b"access-control-max-age", CORS_MAX_AGE.encode()),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})

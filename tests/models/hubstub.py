"""A stand-in Hugging Face hub: a real HTTP server on 127.0.0.1 for download tests.

Serves the routes huggingface_hub 2.x calls, answering the way the real hub does:
  HEAD/GET /{repo}/resolve/{rev}/{file}   X-Repo-Commit, ETag/X-Linked-Etag (sha256 for
                                          LFS), X-Linked-Size; 302 to /cdn/... when
                                          ``redirect`` is on; Range -> 206
  GET /cdn/{sha}                          the bytes, with Range support
  POST /api/models/{repo}/paths-info/{rev}  [{"type": "file", ..., "lfs": {"oid": sha256}}]
Errors carry X-Error-Code like the hub: RepoNotFound (401), GatedRepo (401), EntryNotFound (404).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def synthetic_gguf(seed: int, size: int = 300_000) -> bytes:
    """Bytes that start like a GGUF v3 file; content is deterministic per seed."""
    body = random.Random(seed).randbytes(size - 8)
    return b"GGUF\x03\x00\x00\x00" + body


@dataclass
class StubFile:
    data: bytes
    advertised_sha256: str | None = None  # what the hub claims; default: the real hash
    serve: bytes | None = None  # what it actually sends; default: data
    cut_after: int | None = None  # drop the connection after this many bytes...
    cuts_left: int = 0  # ...this many times

    @property
    def sha256(self) -> str:
        return self.advertised_sha256 or hashlib.sha256(self.data).hexdigest()

    @property
    def body(self) -> bytes:
        return self.data if self.serve is None else self.serve


@dataclass
class StubHub:
    files: dict[tuple[str, str], StubFile] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)
    token: str = "hf_stub_token"
    redirect: bool = False  # resolve answers 302 to a "CDN" host, like the hub
    paths_info: bool = True
    log: list[dict] = field(default_factory=list)

    def add(self, repo: str, filename: str, data: bytes, **kw) -> StubFile:
        self.files[(repo, filename)] = f = StubFile(data, **kw)
        return f

    def start(self) -> StubHub:
        hub = self

        class Handler(_Handler):
            stub = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def requests(self, method: str | None = None) -> list[dict]:
        return [r for r in self.log if method is None or r["method"] == method]


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_PATHS_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)$")
_CDN = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<file>.+)$")


class _Handler(BaseHTTPRequestHandler):
    stub: StubHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # -- routing
    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_POST(self) -> None:
        path = unquote(urlsplit(self.path).path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        self._record("POST", path)
        m = _PATHS_INFO.match(path)
        if not m or not self.stub.paths_info:
            return self._error(404, "EntryNotFound", "no such route")
        if self._denied(m["repo"]):
            return
        self._paths_info(m["repo"], body)

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self._record("HEAD" if head else "GET", path)
        if m := _RESOLVE.match(path):
            return self._resolve(m["repo"], m["file"], head)
        if m := _CDN.match(path):
            f = self.stub.files.get((m["repo"], m["file"]))
            return self._send_bytes(f, head) if f else self._error(404, None, "gone")
        self._error(404, None, "no such route")

    # -- hub behaviour
    def _record(self, method: str, path: str) -> None:
        self.stub.log.append(
            {"method": method, "path": path, "range": self.headers.get("Range"), "auth": self.headers.get("Authorization")}
        )

    def _denied(self, repo: str) -> bool:
        if repo not in {r for r, _ in self.stub.files} | self.stub.gated:
            self._error(401, "RepoNotFound", "Repository not found")
            return True
        if repo in self.stub.gated and self.headers.get("Authorization") != f"Bearer {self.stub.token}":
            self._error(401, "GatedRepo", f"Access to model {repo} is restricted.")
            return True
        return False

    def _resolve(self, repo: str, filename: str, head: bool) -> None:
        if self._denied(repo):
            return
        f = self.stub.files.get((repo, filename))
        if f is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist on main")
        if self.stub.redirect:
            self.send_response(302)
            # another host name, like the hub's CDN: the client must not follow it on HEAD
            cdn = self.stub.url.replace("127.0.0.1", "localhost")
            self.send_header("Location", f"{cdn}/cdn/{repo}/{filename}")
            self._hub_headers(f, linked=True)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_bytes(f, head, hub=True)

    def _hub_headers(self, f: StubFile, linked: bool) -> None:
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", '"' + hashlib.sha1(f.data).hexdigest() + '"' if linked else f'"{f.sha256}"')
        if linked:
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(len(f.body)))

    def _send_bytes(self, f: StubFile, head: bool, hub: bool = False) -> None:
        body, start = f.body, 0
        rng = self.headers.get("Range")
        if rng and (m := re.match(r"bytes=(\d+)-$", rng)):
            start = int(m[1])
        part = body[start:]
        self.send_response(206 if start else 200)
        if hub:
            self._hub_headers(f, linked=False)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if head:
            return
        if f.cut_after is not None and f.cuts_left > 0 and start < f.cut_after:
            f.cuts_left -= 1
            self.wfile.write(part[: f.cut_after - start])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(part)

    def _paths_info(self, repo: str, body: str) -> None:
        try:
            paths = json.loads(body)["paths"]
        except ValueError:
            paths = parse_qs(body).get("paths", [])
        out = []
        for p in paths:
            f = self.stub.files.get((repo, p))
            if f:
                out.append(
                    {
                        "type": "file",
                        "path": p,
                        "size": len(f.data),
                        "oid": hashlib.sha1(f.data).hexdigest(),
                        "lfs": {"oid": f.sha256, "size": len(f.data), "pointerSize": 134},
                    }
                )
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str | None, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

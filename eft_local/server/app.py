"""The OpenAI-compatible HTTP API over one loaded EFT engine (FastAPI).

POST /v1/chat/completions, POST /v1/completions (both with ``stream``), GET /v1/models,
GET /health. Generation runs on the engine thread (``worker.py``); this module parses,
queues, and turns decoder events into OpenAI-shaped JSON or server-sent events.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from eft_local.engine.events import FinishedEvent, TokenEvent
from eft_local.engine.session import Session
from eft_local.server.request import MAX_BODY_BYTES, ApiError, GenRequest, load_json, parse
from eft_local.server.worker import Channel, EngineWorker, Failed, Job, QueueFull, Started

DISCONNECT_POLL_SECONDS = 0.25
STREAM_PACE_SECONDS = 0.02  # after sending a chunk, let tokens gather this long (fewer writes, wake-ups, GIL hand-offs)


@dataclass
class ServerOptions:
    model_name: str
    settings: dict[str, Any]  # the server's defaults: cli.resolve_settings (flags > profile > built-in)
    api_key: str | None = None
    max_queue: int = 16
    parallel: int = 1  # requests sharing each speculative round (the engine holds as many sequences)
    retry_after: int = 5  # seconds, for 503 answers


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def create_app(session: Session, options: ServerOptions) -> FastAPI:
    """An ASGI app serving ``session``'s engine. The engine thread starts/stops with the app."""
    worker = EngineWorker(session, max_queue=options.max_queue, parallel=options.parallel)
    n_ctx = min(m.n_ctx for m in session.engine.models.values())
    created = int(time.time())

    async def lifespan(_app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    app = FastAPI(title="eft-local", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.worker = worker
    app.state.options = options

    # -- errors: always {"error": {...}}, never a traceback -----------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return error_response(ApiError(e.status_code, str(e.detail), code=code))

    def _auth(request: Request) -> None:
        """401 unless the request carries ``Authorization: Bearer KEY`` (when --api-key is set)."""
        if not options.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), options.api_key.encode()):
            what = "missing API key (send Authorization: Bearer KEY)" if not header else "incorrect API key"
            raise ApiError(401, what, code="invalid_api_key", type="authentication_error", headers={"WWW-Authenticate": "Bearer"})

    # -- read-only endpoints ----------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": options.model_name, "running": worker.running is not None, "waiting": worker.waiting}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _auth(request)
        return {"object": "list", "data": [_model_card(options.model_name, created, session)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        _auth(request)
        if model_id != options.model_name:
            raise _unknown_model(model_id, options.model_name)
        return _model_card(options.model_name, created, session)

    # -- generation -----------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generate(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(request, "completion")

    async def _generate(request: Request, kind: str) -> Response:
        _auth(request)
        try:
            return await _answer(request, kind)
        except (ApiError, asyncio.CancelledError):
            raise
        except Exception as e:  # noqa: BLE001 - a bug: one line to the client, the server goes on
            raise ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error") from None

    async def _answer(request: Request, kind: str) -> Response:
        body = load_json(await _read_body(request))
        req = parse(kind, body, options.settings, n_ctx=n_ctx, deltas=session.engine.delta_names)
        if req.model is not None and req.model != options.model_name:
            raise _unknown_model(req.model, options.model_name)
        job = Job(req, Channel(asyncio.get_running_loop()), tokens=req.stream)
        try:
            worker.submit(job)
        except QueueFull as e:
            raise ApiError(
                503,
                f"the server is busy ({e}); retry later",
                type="server_error",
                code="queue_full",
                headers={"Retry-After": str(options.retry_after)},
            ) from None
        try:
            started = await _wait_start(job, request)
        except BaseException:
            job.cancel()
            raise
        if started is None:  # the client left while queued
            return Response(status_code=499)
        reply = _Reply(kind, options.model_name, req, started.prompt_tokens)
        if req.stream:
            return _EventStream(
                job,
                _stream(job, reply),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            fin = await _finish(job, request)
        except BaseException:
            job.cancel()
            raise
        if fin is None:
            return Response(status_code=499)
        return JSONResponse(reply.full(fin))

    async def _wait_start(job: Job, request: Request) -> Started | None:
        while True:
            items = await job.channel.get(DISCONNECT_POLL_SECONDS)
            for i, item in enumerate(items):
                if isinstance(item, Failed):
                    raise item.error
                if isinstance(item, Started):
                    job.channel.unget(items[i + 1 :])
                    return item
            if await request.is_disconnected():
                job.cancel()
                return None

    async def _finish(job: Job, request: Request) -> FinishedEvent | None:
        while True:  # (no TokenEvents come for a non-streamed job: this wakes once, or to poll the client)
            for item in await job.channel.get(DISCONNECT_POLL_SECONDS):
                if isinstance(item, Failed):
                    raise item.error
                if isinstance(item, FinishedEvent):
                    if item.reason == "error":
                        raise ApiError(400, item.error or "generation failed", code="generation_error")
                    return item
            if await request.is_disconnected():
                job.cancel()
                return None

    async def _stream(job: Job, reply: _Reply) -> AsyncIterator[str]:
        try:
            if reply.kind == "chat":
                yield _sse(reply.chunk(role=True))
            while True:
                items = await job.channel.get()
                text = "".join(i.text for i in items if isinstance(i, TokenEvent))
                if text:
                    yield _sse(reply.chunk(text=text))
                    await job.channel.pause(STREAM_PACE_SECONDS)
                for item in items:
                    if isinstance(item, Failed):
                        yield _sse(item.error.body())
                        yield "data: [DONE]\n\n"
                        return
                    if isinstance(item, FinishedEvent):
                        if item.reason == "error":
                            yield _sse(ApiError(400, item.error or "generation failed", code="generation_error").body())
                        else:
                            yield _sse(reply.chunk(finished=item))
                            if reply.req.include_usage:
                                yield _sse(reply.chunk(usage_of=item))
                        yield "data: [DONE]\n\n"
                        return
        finally:  # client gone (or done): the engine stops at its next round
            job.cancel()

    return app


class _EventStream(StreamingResponse):
    """A streamed answer whose job is cancelled however the response ends (done, error, client gone)."""

    def __init__(self, job: Job, content: AsyncIterator[str], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _unknown_model(name: str, served: str) -> ApiError:
    return ApiError(
        404,
        f"model {name!r} is not served here; this server has {served!r} (GET /v1/models)",
        param="model",
        code="model_not_found",
    )


def _model_card(name: str, created: int, session: Session) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "eft-local",
        "eft": {role: m.path.name for role, m in session.engine.roles.items()},
    }


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


class _Reply:
    """Builds the OpenAI-shaped bodies of one answer."""

    def __init__(self, kind: str, model: str, req: GenRequest, prompt_tokens: int) -> None:
        self.kind, self.model, self.req, self.prompt_tokens = kind, model, req, prompt_tokens
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "system_fingerprint": None}

    def usage(self, fin: FinishedEvent) -> dict[str, int]:
        n = len(fin.token_ids)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n, "total_tokens": self.prompt_tokens + n}

    @staticmethod
    def eft(fin: FinishedEvent) -> dict[str, Any]:
        s = fin.stats
        return {"drafted": s.drafted, "accepted": s.accepted, "tokens_per_second": round(s.tokens_per_second, 2)}

    @staticmethod
    def reason(fin: FinishedEvent) -> str:
        return "length" if fin.reason == "length" else "stop"

    def full(self, fin: FinishedEvent) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": fin.text},
                "logprobs": None,
                "finish_reason": self.reason(fin),
            }
            out = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": fin.text, "logprobs": None, "finish_reason": self.reason(fin)}
            out = self._head("text_completion")
        out.update(choices=[choice], usage=self.usage(fin), eft=self.eft(fin))
        return out

    def chunk(
        self, *, role: bool = False, text: str = "", finished: FinishedEvent | None = None, usage_of: FinishedEvent | None = None
    ) -> dict[str, Any]:
        chat = self.kind == "chat"
        out = self._head("chat.completion.chunk" if chat else "text_completion")
        if usage_of is not None:
            out.update(choices=[], usage=self.usage(usage_of), eft=self.eft(usage_of))
            return out
        reason = self.reason(finished) if finished is not None else None
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        out["choices"] = [choice]
        if finished is not None:
            out["eft"] = self.eft(finished)
        if self.req.include_usage:
            out["usage"] = None
        return out

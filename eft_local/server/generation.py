"""The life of one generation request, shared by the chat and completions endpoints: parse,
queue on the engine thread, wait for the start, then one JSON body or a server-sent stream.

A client that goes away while its request waits or runs cancels it (the engine stops at its
next round); every failure is an OpenAI-shaped error, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.requests import ClientDisconnect

from eft_local.engine.events import FinishedEvent, TokenEvent
from eft_local.server.answers import AllAnswered, Answer
from eft_local.server.connections import client_left
from eft_local.server.reply import Reply, to_json
from eft_local.server.request import MAX_ANSWER_BYTES, MAX_BODY_BYTES, ApiError, load_json, parse
from eft_local.server.state import ServerState, state_of
from eft_local.server.worker import Channel, Failed, Job, QueueFull, Started
from eft_local.settings import field_name

DISCONNECT_POLL_SECONDS = 0.25
ASK_AFTER_SECONDS = 1.0  # a queued request whose client ended its input is asked this late whether it is still there
STREAM_PACE_SECONDS = 0.02  # after sending a chunk, let tokens gather this long (fewer writes, wake-ups, GIL hand-offs)


async def generate(request: Request, kind: str) -> Response:
    """``kind``: "chat" (messages) or "completion" (prompt)."""
    st = state_of(request)
    st.auth(request)
    try:
        return await _answer(st, request, kind)
    except (ApiError, asyncio.CancelledError):
        raise
    except Exception as e:  # noqa: BLE001 - a bug: one line to the client, the server goes on
        raise ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error") from None


async def _answer(st: ServerState, request: Request, kind: str) -> Response:
    body = load_json(await read_body(request))
    settings = st.settings_for(body.get("model"))
    engine = st.session.engine
    req = parse(kind, body, settings, n_ctx=st.n_ctx, deltas=engine.delta_names, n_vocab=engine.vocab.n)
    job = Job(req, Channel(asyncio.get_running_loop()), tokens=req.stream or req.logprobs is not None)
    try:
        st.worker.submit(job)
    except QueueFull as e:
        raise ApiError(
            503,
            f"the server is busy ({e}); retry later",
            type="server_error",
            code="queue_full",
            headers={"Retry-After": str(st.options.retry_after)},
        ) from None
    try:
        started = await _wait_start(job, request)
    except BaseException:
        job.cancel()
        raise
    if started is None:  # the client left while queued: its request never starts
        st.worker.withdraw(job)
        return Response(status_code=499)
    reply = Reply(kind, req.model or st.options.model_name, req, started.prompt_tokens, st.texts)
    if req.stream:
        return _EventStream(
            job,
            _stream(job, reply),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        body = await _finish(job, request, _Body(reply))
    except BaseException:
        job.cancel()
        raise
    if body is None:
        return Response(status_code=499)
    return body.response()


async def _wait_start(job: Job, request: Request) -> Started | None:
    """The job's start, or None once its client is gone. A client that closed its connection
    (rather than only its sending side) is told apart after ``ASK_AFTER_SECONDS`` in the queue
    (``connections.client_left``), so an abandoned request never runs."""
    queued = time.monotonic()
    while True:
        items = await job.channel.get(DISCONNECT_POLL_SECONDS)
        for i, item in enumerate(items):
            if isinstance(item, Failed):
                raise item.error
            if isinstance(item, Started):
                job.channel.unget(items[i + 1 :])
                return item
        late = time.monotonic() - queued >= ASK_AFTER_SECONDS
        if await request.is_disconnected() or (late and client_left(request.scope)):
            job.cancel()
            return None


async def _finish(job: Job, request: Request, body: _Body) -> _Body | None:
    """``body`` with the choices of a non-streamed job: one per prompt, each turned into JSON as it
    comes (the token events of a plain generation are gathered for its log-probabilities)."""
    tokens: list[TokenEvent] = []
    while True:
        for item in await job.channel.get(DISCONNECT_POLL_SECONDS):
            if isinstance(item, Failed):
                raise item.error
            if isinstance(item, TokenEvent):
                tokens.append(item)
            elif isinstance(item, FinishedEvent):
                if item.reason == "error":
                    raise ApiError(400, item.error_text(field_name) or "generation failed", code="generation_error")
                body.add(Answer(0, tokens=tokens, fin=item))
                return body
            elif isinstance(item, Answer):  # one prompt of an echo / several-prompt request
                body.add(item)
            elif isinstance(item, AllAnswered):
                return body
        if await request.is_disconnected():
            job.cancel()
            return None


class _Body:
    """A non-streamed answer kept as compact JSON, one choice at a time (a prompt's log-probability
    objects live only until its choice is written), then sent in pieces: the transport's buffer
    stays bounded however large the answer (``MAX_ANSWER_BYTES``)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.choices: dict[int, bytes] = {}
        self.counts: list[Answer] = []  # what usage and the eft stats need, without the log-probabilities
        self.size = 0

    def add(self, a: Answer) -> None:
        data = to_json(self.reply.choice(a))
        self.size += len(data) + 1
        if self.size > MAX_ANSWER_BYTES:
            raise ApiError(
                400,
                f"the answer would be larger than {MAX_ANSWER_BYTES / 2**20:g} MiB; send fewer prompts per request "
                "or ask for fewer log-probabilities",
                param="logprobs" if self.reply.req.logprobs is not None else "prompt",
                code="answer_too_large",
            )
        self.choices[a.index] = data
        self.counts.append(Answer(a.index, prompt_count=a.prompt_tokens, fin=a.fin))

    def response(self) -> Response:
        head, tail = self.reply.envelope(self.counts)
        pieces = [head]
        for i, index in enumerate(sorted(self.choices)):
            pieces += [b","] * bool(i) + [self.choices.pop(index)]
        pieces.append(tail)
        length = sum(map(len, pieces))

        async def send_pieces() -> AsyncIterator[bytes]:
            while pieces:
                yield pieces.pop(0)

        return StreamingResponse(send_pieces(), media_type="application/json", headers={"content-length": str(length)})


async def _stream(job: Job, reply: Reply) -> AsyncIterator[str]:
    try:
        if reply.kind == "chat":
            yield sse(reply.chunk(role=True))
        while True:
            items = await job.channel.get()
            tokens = [i for i in items if isinstance(i, TokenEvent)]
            text = "".join(i.text for i in tokens)
            if text or (tokens and reply.req.logprobs is not None):
                yield sse(reply.chunk(text=text, tokens=tokens))
                await job.channel.pause(STREAM_PACE_SECONDS)
            for item in items:
                if isinstance(item, Failed):
                    yield sse(item.error.body())
                    yield "data: [DONE]\n\n"
                    return
                if isinstance(item, FinishedEvent):
                    if item.reason == "error":
                        yield sse(
                            ApiError(400, item.error_text(field_name) or "generation failed", code="generation_error").body()
                        )
                    else:
                        yield sse(reply.chunk(finished=item))
                        if reply.req.include_usage:
                            yield sse(reply.chunk(usage_of=item))
                    yield "data: [DONE]\n\n"
                    return
    finally:  # client gone (or done): the engine stops at its next round
        job.cancel()


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


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
            chunks.append(chunk)
    except ClientDisconnect:  # it left mid-body: nobody to answer
        raise ApiError(499, "the client went away before sending the whole body") from None
    return b"".join(chunks)


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"

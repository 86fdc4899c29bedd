"""The OpenAI-compatible HTTP API over one loaded EFT engine (FastAPI).

One module per endpoint family, each a thin router over the shared ``ServerState``
(``app.state.eft``): ``chat`` (POST /v1/chat/completions), ``completions`` (POST
/v1/completions), ``tokenizer`` (/tokenizer_info, /tokenize, /detokenize), ``models``
(/health, /v1/models). Generation runs on the engine thread (``worker``); ``generation``
queues a request there and turns its events into JSON or server-sent events (``reply``).
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from eft_local.engine.session import Session
from eft_local.server import chat, completions, models, tokenizer
from eft_local.server.request import ApiError
from eft_local.server.state import ServerOptions, ServerState

__all__ = ["ServerOptions", "create_app", "error_response"]


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _api_error(_req: Request, e: ApiError) -> JSONResponse:
    return error_response(e)


async def _http_error(_req: Request, e: StarletteHTTPException) -> JSONResponse:
    """Errors are always ``{"error": {...}}``, never a traceback (404, 405 included)."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
    return error_response(ApiError(e.status_code, str(e.detail), code=code))


def create_app(session: Session, options: ServerOptions) -> FastAPI:
    """An ASGI app serving ``session``'s engine. The engine thread starts/stops with the app."""
    state = ServerState(session, options)

    async def lifespan(_app: FastAPI):
        state.worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.worker.stop)

    app = FastAPI(title="eft-local", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.eft = state
    app.state.worker = state.worker
    app.state.options = options
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for family in (models, tokenizer, completions, chat):
        app.include_router(family.router)
    return app

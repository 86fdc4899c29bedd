"""What every endpoint shares, kept on ``app.state.eft``: the session, the engine thread,
the options, the served model names (the mix and its variants) and the token texts.

Route functions stay thin: they take this state from the request (``state_of``), as
vLLM's routes take theirs from ``app.state``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from eft_local.engine.config import effective_settings
from eft_local.engine.session import Session
from eft_local.server.request import ApiError
from eft_local.server.worker import EngineWorker


@dataclass
class ServerOptions:
    model_name: str
    settings: dict[str, Any]  # the server's defaults: cli.resolve_settings (flags > profile > built-in)
    api_key: str | None = None
    max_queue: int = 16
    parallel: int = 1  # requests sharing each speculative round (the engine holds as many sequences)
    retry_after: int = 5  # seconds, for 503 answers
    # name -> settings layer (alpha, beta, weights, temperature, …): each is served as a model of its own
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class TokenTexts:
    """Every id's text in the shared vocabulary, read once at start-up (the engine thread owns
    the models afterwards, so replies never call into llama.cpp for a token's text)."""

    def __init__(self, session: Session) -> None:
        chat = session.engine.chat
        self.pieces = [chat.piece(t) for t in range(session.engine.vocab.n)]
        # SentencePiece-style vocabularies mark a word start with a space, and the tokenizer
        # adds one before the text: detokenizing drops it again, as llama.cpp's detokenize does.
        probe = chat.tokenize("a", add_bos=False, special=False)
        self.space_prefix = bool(probe) and chat.piece(probe[0]).startswith(b" ")

    def bytes(self, token: int) -> bytes:
        return self.pieces[token] if 0 <= token < len(self.pieces) else b""

    def text(self, token: int) -> str:
        return self.bytes(token).decode("utf-8", "replace")

    def join(self, tokens: list[int]) -> str:
        text = b"".join(self.bytes(t) for t in tokens).decode("utf-8", "replace")
        return text[1:] if self.space_prefix and text.startswith(" ") else text


class ServerState:
    def __init__(self, session: Session, options: ServerOptions) -> None:
        self.session = session
        self.options = options
        self.worker = EngineWorker(session, max_queue=options.max_queue, parallel=options.parallel)
        self.n_ctx = session.engine.n_ctx
        self.created = int(time.time())
        self.texts = TokenTexts(session)

    @property
    def model_names(self) -> list[str]:
        """The mix itself, then every variant."""
        return [self.options.model_name, *self.options.variants]

    def settings_for(self, model: Any) -> dict[str, Any]:
        """The server's settings for ``model`` (a variant's layer on top); 404 for an unknown name.

        A request's own fields then go on top of these (``request.parse``)."""
        if model is None or not isinstance(model, str) or model == self.options.model_name:
            return self.options.settings  # a non-string model is request.parse's 400
        if model in self.options.variants:
            return effective_settings(self.options.settings, dict(self.options.variants[model]))
        raise unknown_model(model, self.model_names)

    def auth(self, request: Request) -> None:
        """401 unless the request carries ``Authorization: Bearer KEY`` (when --api-key is set)."""
        key = self.options.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            what = "missing API key (send Authorization: Bearer KEY)" if not header else "incorrect API key"
            raise ApiError(401, what, code="invalid_api_key", type="authentication_error", headers={"WWW-Authenticate": "Bearer"})


def state_of(request: Request) -> ServerState:
    return request.app.state.eft


def unknown_model(name: str, served: list[str]) -> ApiError:
    names = ", ".join(repr(n) for n in served)
    return ApiError(
        404,
        f"model {name!r} is not served here; this server has {names} (GET /v1/models)",
        param="model",
        code="model_not_found",
    )

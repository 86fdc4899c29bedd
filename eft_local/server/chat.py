"""POST /v1/chat/completions: messages through the chat template; ``logprobs``/``top_logprobs``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from eft_local.server.generation import generate

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await generate(request, "chat")

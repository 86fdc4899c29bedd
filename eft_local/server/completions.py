"""POST /v1/completions: raw prompts (text or token ids, one or many), ``echo`` and legacy ``logprobs``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from eft_local.server.generation import generate

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await generate(request, "completion")

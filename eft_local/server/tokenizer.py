"""The tokenizer endpoints, named and shaped as vLLM's (lm-evaluation-harness's
``tokenizer_backend=remote`` uses exactly these): GET /tokenizer_info, POST /tokenize,
POST /detokenize.

The tokenizer is the chat model's, which every role shares (``llama.vocab`` checked that at
load). llama.cpp's tokenizer only reads the vocabulary, so these run beside a generation
(off the event loop, in a thread) instead of queueing behind it, as llama-server's do.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from eft_local.engine.session import with_system
from eft_local.server.generation import read_body
from eft_local.server.request import bad, load_json, parse_messages
from eft_local.server.state import ServerState, state_of

router = APIRouter()


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> dict[str, Any]:
    st = state_of(request)
    st.auth(request)
    chat = st.session.engine.chat
    eos, bos = chat.eos, chat.bos
    name = lambda t: chat.token_text(t).decode("utf-8", "replace") if t >= 0 else None  # noqa: E731 - the vocabulary's own text
    return {
        "tokenizer_class": chat.tokenizer_model,
        "eos_token": name(eos),
        "eos_token_id": eos if eos >= 0 else None,
        "bos_token": name(bos),
        "bos_token_id": bos if bos >= 0 else None,
        "add_bos_token": chat.add_bos,
        "pad_token": name(eos),  # GGUF chat models rarely name one: EOS pads, as in HF
        "model_max_length": st.n_ctx,
        "vocab_size": st.session.engine.vocab.n,
        "chat_template": chat.chat_template,
    }


@router.post("/tokenize")
async def tokenize(request: Request) -> dict[str, Any]:
    """``{prompt, add_special_tokens}`` or ``{messages}`` (the chat template's tokens, with the
    generation prompt) → ``{tokens, count, max_model_len}``."""
    st = state_of(request)
    st.auth(request)
    body = load_json(await read_body(request))
    special = body.get("add_special_tokens", True)
    if not isinstance(special, bool):
        raise bad("add_special_tokens", "'add_special_tokens' must be true or false", "invalid_type")
    if "messages" in body:
        messages = parse_messages(body["messages"])
        tokens = await asyncio.to_thread(_chat_tokens, st, messages)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise bad("prompt", "'prompt' must be a string (or send 'messages')", "invalid_type")
        chat = st.session.engine.chat
        tokens = await asyncio.to_thread(
            chat.tokenize, prompt, add_bos=special and chat.add_bos, special=not st.session.plain_content
        )
    return {"tokens": tokens, "count": len(tokens), "max_model_len": st.n_ctx}


def _chat_tokens(st: ServerState, messages: list[dict[str, str]]) -> list[int]:
    s, engine = st.session, st.session.engine
    try:
        ids = engine.prompt(messages=with_system(messages, s.system_prompt), style=s.prompt_style, plain_content=s.plain_content)
    except Exception as e:  # noqa: BLE001 - a template failure is the request's problem, in one line
        raise bad("messages", f"the chat template failed: {e}") from None
    return ids[engine.chat_name]


@router.post("/detokenize")
async def detokenize(request: Request) -> dict[str, Any]:
    """``{tokens}`` → ``{prompt}``."""
    st = state_of(request)
    st.auth(request)
    body = load_json(await read_body(request))
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise bad("tokens", "'tokens' must be a list of token ids", "invalid_type")
    n = st.session.engine.vocab.n
    wrong = next((t for t in tokens if not 0 <= t < n), None)
    if wrong is not None:
        raise bad("tokens", f"'tokens' holds token id {wrong}, outside the vocabulary (0..{n - 1})")
    return {"prompt": st.texts.join(tokens)}

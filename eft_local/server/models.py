"""GET /health, GET /v1/models (the mix and every variant), GET /v1/models/{id}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from eft_local.server.state import ServerState, state_of, unknown_model

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    st = state_of(request)
    return {
        "status": "ok",
        "model": st.options.model_name,
        "running": st.worker.running is not None,
        "waiting": st.worker.waiting,
    }


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    st = state_of(request)
    st.auth(request)
    return {"object": "list", "data": [card(st, name) for name in st.model_names]}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request) -> dict[str, Any]:
    st = state_of(request)
    st.auth(request)
    if model_id not in st.model_names:
        raise unknown_model(model_id, st.model_names)
    return card(st, model_id)


def card(st: ServerState, name: str) -> dict[str, Any]:
    out = {
        "id": name,
        "object": "model",
        "created": st.created,
        "owned_by": "eft-local",
        "max_model_len": st.n_ctx,
        "eft": {role: m.path.name for role, m in st.session.engine.roles.items()},
    }
    if name != st.options.model_name:
        out["parent"] = st.options.model_name
        out["variant"] = dict(st.options.variants[name])
    return out

"""``eft-local chat`` (the default command): the Textual chat app."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from eft_local.cli.options import (
    check_mix,
    gpu_layers,
    model_args,
    resolve_models,
    resolve_settings,
    rpc_placement,
    sampling_args,
)
from eft_local.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("chat", help="the chat app (default)")
    model_args(p)
    sampling_args(p)
    p.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from eft_local.engine.config import generation_config
    from eft_local.tui import run_chat

    load_error = None
    paths: dict[str, Path] | None = None
    defaults: dict[str, Any] = {}
    profile_name = None
    try:
        paths, defaults, profile_name = resolve_models(args)
    except UserError as e:
        load_error = str(e)
    settings = resolve_settings(args, defaults)
    settings["rpc"] = {}
    if paths is not None:
        check_mix(settings, paths)
        settings["rpc"] = rpc_placement(args, defaults, paths)
    return run_chat(
        paths=paths,
        load_error=load_error,
        n_ctx=settings["n_ctx"],
        n_gpu_layers=gpu_layers(settings),
        n_threads=settings["threads"],
        sampling=generation_config(settings).sampling,
        draft_tokens=settings["draft_tokens"],
        max_tokens=settings["max_tokens"],
        prompt_style=settings["prompt_style"],
        seed=settings["seed"],
        system_prompt=settings["system_prompt"],
        profile_name=profile_name,
        stop=tuple(settings["stop"]),
        draft_with=settings["draft_with"],
        rpc=settings["rpc"],
    )

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
    welcome = None
    try:
        paths, defaults, profile_name = resolve_models(args)
    except UserError as e:
        load_error = str(e)
        missing = _default_not_downloaded(args)
        if missing:  # first run: open on the demo family that ships with eft-local
            from eft_local.models import demo

            args.profile = demo.PROFILE
            try:
                paths, defaults, profile_name = resolve_models(args)
                load_error, welcome = None, demo.welcome(missing)
            except UserError:
                args.profile = None
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
        welcome=welcome,
    )


def _default_not_downloaded(args: argparse.Namespace) -> str | None:
    """The default profile's name when the app was started plainly (no --profile, no model
    flags) and that profile's hub files are not all downloaded; else None."""
    from eft_local.mix.mixture import ROLES
    from eft_local.models.profiles import default_models_dir, get_profile, load_profiles

    if args.profile or any(getattr(args, r, None) for r in ROLES) or getattr(args, "delta", None):
        return None
    try:
        profile = get_profile(load_profiles(getattr(args, "models_file", None)), None)
    except UserError:
        return None
    root = Path(args.models_dir).expanduser() if getattr(args, "models_dir", None) else default_models_dir()
    hub = [mf for mf in profile.files.values() if not mf.is_local]
    return profile.name if hub and not all(mf.local_path(root).is_file() for mf in hub) else None

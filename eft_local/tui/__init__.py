"""The chat app (``eft-local`` / ``eft-local chat``): a Textual TUI that streams EFT tokens."""

from __future__ import annotations

from pathlib import Path

from ..sampling import SamplingParams


def run_chat(
    *,
    paths: dict[str, Path] | None,
    load_error: str | None = None,
    n_ctx: int = 4096,
    n_gpu_layers: int = 0,
    n_threads: int | None = None,
    sampling: SamplingParams | None = None,
    draft_tokens: int | None = None,
    max_tokens: int = 512,
    prompt_style: str = "template",
    seed: int | None = None,
    system_prompt: str | None = None,
    profile_name: str | None = None,
    stop: tuple[str, ...] = (),
    rpc: dict[str, list[str]] | None = None,
) -> int:
    """Run the app until the user quits; 1 when the models could not be loaded or the app
    crashed (Textual has then restored the terminal and printed the error), else 0."""
    from . import escape_keys
    from .app import EftChatApp

    escape_keys.install()
    app = EftChatApp(
        paths=paths,
        load_error=load_error,
        n_ctx=n_ctx,
        n_gpu_layers=n_gpu_layers,
        n_threads=n_threads,
        sampling=sampling,
        draft_tokens=draft_tokens,
        max_tokens=max_tokens,
        prompt_style=prompt_style,
        seed=seed,
        system_prompt=system_prompt,
        profile_name=profile_name,
        stop=stop,
        rpc=rpc,
    )
    app.run()
    if app.return_code:  # an unexpected exception ended the app
        return app.return_code
    return 1 if app.load_error else 0


def __getattr__(name: str):
    if name == "EftChatApp":  # lazy: importing eft_local.tui must not import Textual
        from .app import EftChatApp

        return EftChatApp
    raise AttributeError(name)

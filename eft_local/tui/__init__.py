"""The chat app (``eft-local`` / ``eft-local chat``): a Textual TUI that streams EFT tokens."""

from __future__ import annotations

from typing import Any


def run_chat(**options: Any) -> int:
    """Run the app until the user quits; 1 when the models could not be loaded or the app
    crashed (Textual has then restored the terminal and printed the error), else 0.

    ``options`` are ``EftChatApp``'s keyword arguments (paths, load_error, n_ctx, sampling, …).
    """
    from eft_local.tui import escape_keys
    from eft_local.tui.app import EftChatApp

    escape_keys.install()
    app = EftChatApp(**options)
    app.run()
    if app.return_code:  # an unexpected exception ended the app
        return app.return_code
    return 1 if app.load_error else 0


def __getattr__(name: str):
    if name == "EftChatApp":  # lazy: importing eft_local.tui must not import Textual
        from eft_local.tui.app import EftChatApp

        return EftChatApp
    raise AttributeError(name)

"""Key bindings in one table: the App's BINDINGS, the footer and the help screen use it."""

from __future__ import annotations

from textual.binding import Binding

# key, action, footer label, help text, shown in footer, priority (beats the prompt's own keys)
KEYS: list[tuple[str, str, str, str, bool, bool]] = [
    ("escape", "stop", "Stop", "stop generating (keeps the partial answer); else back to the prompt", True, False),
    ("f1", "help", "Help", "this help", True, False),
    ("ctrl+r", "regenerate", "Regen", "answer the last message again", True, False),
    ("ctrl+t", "toggle_delta", "Delta", "delta view: colour tokens by log p_EFT − log p_base", True, False),
    ("ctrl+b", "compare", "Compare", "answer with base alone / chat alone / EFT side by side", True, False),
    ("ctrl+g", "settings", "Controls", "show/focus the EFT controls (α, β, T, top-p, speculative)", True, False),
    ("f5", "preset('eft')", "EFT", "preset: EFT with your α/β", False, True),
    ("f6", "preset('chat')", "Chat", "preset: small chat model alone (α=1, β=0)", False, True),
    ("f7", "preset('base')", "Base", "preset: base model alone (α=0, β=1)", False, True),
    ("ctrl+s", "system_prompt", "System", "edit the system prompt", False, False),
    ("ctrl+n", "new_chat", "New", "start a new chat", True, False),
    ("ctrl+o", "history", "History", "open a saved chat", False, False),
    ("ctrl+y", "copy_answer", "Copy", "copy the last answer (OSC 52 clipboard)", False, True),
    ("f3", "copy_code", "Copy code", "copy the last code block of the answers", False, False),
    ("f4", "export", "Export", "export the chat to Markdown in the current directory", False, False),
    ("ctrl+q", "quit", "Quit", "quit", True, True),
]

# The footer's abbreviations, used when the full labels don't fit (below ~72 columns); F1 lists every
# key with its whole text. Every key shown in the footer has one.
SHORT_LABELS: dict[str, str] = {
    "stop": "Stop",
    "help": "Help",
    "regenerate": "Redo",
    "toggle_delta": "Δ",
    "compare": "Cmp",
    "settings": "Set",
    "new_chat": "New",
    "quit": "Quit",
}

EDITING = [
    ("enter", "send the message"),
    ("shift+enter / ctrl+j", "new line in the message"),
    ("tab / shift+tab", "move between the prompt and the controls"),
    ("enter (in a control)", "back to the prompt (a value that isn't valid shows the one in force again)"),
]


def binding_id(action: str) -> str:
    """Stable id for App.set_keymap: "preset('eft')" -> "preset-eft"."""
    return action.replace("('", "-").replace("')", "").replace("_", "-")


def bindings() -> list[Binding]:
    return [
        Binding(key, action, label, show=show, priority=priority, id=binding_id(action))
        for key, action, label, _, show, priority in KEYS
    ]

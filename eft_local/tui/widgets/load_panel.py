"""Model loading: progress per role while a worker loads, or the load error and what to do.

``LoadPanel`` owns the loading worker (``eft_local.engine.loading``, the loader the CLI uses
too) and tells the app the outcome with one message, ``Loaded`` or ``Failed``. A load that
finishes after the app quit (the worker was cancelled) frees its models at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Label, ProgressBar, Static
from textual.worker import get_current_worker

from eft_local.engine.decoder import EftEngine
from eft_local.engine.loading import LoadOptions, load_engine
from eft_local.errors import UserError
from eft_local.mix.mixture import role_help

LOAD_HINT = (
    "Check the paths (--base/--chat/--reference) or the profile in models.toml, or download a profile's "
    "files with [b]eft-local download NAME[/].  [dim]Ctrl+Q quits.[/]"
)


def where(n_gpu_layers: int, servers: list[str] | None) -> str:
    """Where a role's layers go: local CPU/GPU, or RPC servers (see eft_local.llama.rpc)."""
    if servers:
        return "RPC " + ", ".join(servers) + " + local"
    return f"GPU layers {n_gpu_layers}" if n_gpu_layers else "CPU only"


def load_failure(error: Exception) -> str:
    """One line for a load that failed: our own checks say what to do; llama.cpp's errors get their type."""
    return str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"


class LoadPanel(Vertical):
    class Progress(Message):
        def __init__(self, role: str, fraction: float) -> None:
            super().__init__()
            self.role, self.fraction = role, fraction

    class Loaded(Message):
        def __init__(self, engine: EftEngine) -> None:
            super().__init__()
            self.engine = engine

    class Failed(Message):
        def __init__(self, error: str) -> None:
            super().__init__()
            self.error = error

    def __init__(self, paths: Mapping[str, Path], options: LoadOptions, **kwargs) -> None:
        super().__init__(**kwargs)
        self.paths = dict(paths)
        self.options = options
        self.border_title = "Loading models"

    def compose(self) -> ComposeResult:
        for role, path in self.paths.items():
            info = f"  {where(self.options.n_gpu_layers, self.options.rpc.get(role))} · {role_help(role)}"
            with Horizontal(classes="load-row"):
                yield Label(Content.styled(f"{role:<9}", "bold"), classes="role")
                yield Label(Content.assemble(Path(path).name, (info, "dim")), classes="file")
                yield ProgressBar(total=1.0, show_eta=False, id=_bar_id(role))

    def on_mount(self) -> None:
        self.run_worker(self._load, thread=True, group="load", exit_on_error=False)

    def _load(self) -> None:
        worker = get_current_worker()
        try:
            engine = load_engine(self.paths, self.options, on_progress=lambda r, f: self.post_message(self.Progress(r, f)))
        except Exception as e:  # our checks and llama.cpp failures alike: one line, no traceback
            self.post_message(self.Failed(load_failure(e)))
            return
        if worker.is_cancelled:  # the app quit while the models loaded
            engine.close()
            return
        self.post_message(self.Loaded(engine))

    def on_load_panel_progress(self, message: Progress) -> None:
        message.stop()
        self.progress(message.role, message.fraction)

    def progress(self, role: str, fraction: float) -> None:
        """Progress of the model loading for ``role``; roles sharing its file share it."""
        for other, path in self.paths.items():
            if other == role or Path(path) == Path(self.paths.get(role, "")):
                self.query_one(f"#{_bar_id(other)}", ProgressBar).update(progress=min(max(fraction, 0.0), 1.0))


def _bar_id(role: str) -> str:
    return "progress-" + role.replace(".", "--")


class ErrorPanel(Static):
    """Shown instead of the chat when models can't be loaded: the error and the next step."""

    def __init__(self, error: str, hint: str = LOAD_HINT, **kwargs) -> None:
        super().__init__(Content.assemble((f"✗ {error}", "bold red"), "\n\n", Content.from_markup(hint)), **kwargs)
        self.border_title = "Could not load the models"

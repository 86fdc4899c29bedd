"""Model loading progress per role, or the load error and what to do about it."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Label, ProgressBar, Static

ROLE_HELP = {
    "base": "large pre-trained model (knowledge)",
    "chat": "small fine-tuned model (behaviour)",
    "reference": "small base the chat model was tuned from",
}


class LoadPanel(Vertical):
    def __init__(self, paths: dict[str, Path], n_gpu_layers: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.paths = paths
        self.n_gpu_layers = n_gpu_layers
        self.border_title = "Loading models"

    def compose(self) -> ComposeResult:
        gpu = f"GPU layers {self.n_gpu_layers}" if self.n_gpu_layers else "CPU only"
        for role, path in self.paths.items():
            with Horizontal(classes="load-row"):
                yield Label(f"[b]{role:<9}[/]", classes="role")
                yield Label(Content.assemble(Path(path).name, (f"  {gpu} · {ROLE_HELP.get(role, '')}", "dim")), classes="file")
                yield ProgressBar(total=1.0, show_eta=False, id=f"progress-{role}")

    def progress(self, role: str, fraction: float) -> None:
        self.query_one(f"#progress-{role}", ProgressBar).update(progress=min(max(fraction, 0.0), 1.0))


class ErrorPanel(Static):
    """Shown instead of the chat when models can't be loaded: the error and the next step."""

    def __init__(self, error: str, hint: str, **kwargs) -> None:
        super().__init__(Content.assemble((f"✗ {error}", "bold red"), "\n\n", Content.from_markup(hint)), **kwargs)
        self.border_title = "Could not load the models"

"""Model loading progress per role, or the load error and what to do about it."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Label, ProgressBar, Static

from eft_local.mix.mixture import role_help


def where(n_gpu_layers: int, servers: list[str] | None) -> str:
    """Where a role's layers go: local CPU/GPU, or RPC servers (see eft_local.llama.rpc)."""
    if servers:
        return "RPC " + ", ".join(servers) + " + local"
    return f"GPU layers {n_gpu_layers}" if n_gpu_layers else "CPU only"


class LoadPanel(Vertical):
    def __init__(self, paths: dict[str, Path], n_gpu_layers: int, rpc: dict[str, list[str]] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.paths = paths
        self.n_gpu_layers = n_gpu_layers
        self.rpc = rpc or {}
        self.border_title = "Loading models"

    def compose(self) -> ComposeResult:
        for role, path in self.paths.items():
            info = f"  {where(self.n_gpu_layers, self.rpc.get(role))} · {role_help(role)}"
            with Horizontal(classes="load-row"):
                yield Label(Content.styled(f"{role:<9}", "bold"), classes="role")
                yield Label(Content.assemble(Path(path).name, (info, "dim")), classes="file")
                yield ProgressBar(total=1.0, show_eta=False, id=_bar_id(role))

    def progress(self, role: str, fraction: float) -> None:
        """Progress of the model loading for ``role``; roles sharing its file share it."""
        for other, path in self.paths.items():
            if other == role or Path(path) == Path(self.paths.get(role, "")):
                self.query_one(f"#{_bar_id(other)}", ProgressBar).update(progress=min(max(fraction, 0.0), 1.0))


def _bar_id(role: str) -> str:
    return "progress-" + role.replace(".", "--")


class ErrorPanel(Static):
    """Shown instead of the chat when models can't be loaded: the error and the next step."""

    def __init__(self, error: str, hint: str, **kwargs) -> None:
        super().__init__(Content.assemble((f"✗ {error}", "bold red"), "\n\n", Content.from_markup(hint)), **kwargs)
        self.border_title = "Could not load the models"

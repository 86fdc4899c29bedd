"""Loading an engine: the one policy every front end shares (CLI commands and the chat app).

Where layers go by default (``gpu_layers``: all of them when a GPU or RPC servers can take
them, else none) is decided with ``EftEngine.load``, so a library caller gets it too.

Every role's file is checked first, so a missing or non-GGUF third file fails in a second
with one line instead of after minutes of loading the first two; then ``EftEngine.load``
loads each distinct model, reporting ``on_progress(role, fraction)`` per role (a front end
decides how to show it: stderr lines, progress bars).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eft_local.engine.eft_engine import EftEngine, gpu_layers
from eft_local.llama.files import check_gguf
from eft_local.mix.mixture import check_roles
from eft_local.settings import SETTINGS

__all__ = ["LoadOptions", "ProgressFn", "check_files", "gpu_layers", "load_engine"]

ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class LoadOptions:
    """Where and how the models load (the load-scope settings, resolved by a front end)."""

    n_ctx: int = SETTINGS["n_ctx"].default
    n_gpu_layers: int | None = SETTINGS["gpu_layers"].default  # None: all on a GPU (or RPC) build, else 0
    n_threads: int | None = None
    rpc: Mapping[str, Sequence[str]] = field(default_factory=dict)  # role -> RPC servers holding its layers
    n_seq: int = 1  # sequences per context (the server's --parallel)


def check_files(paths: Mapping[str, str | Path]) -> None:
    """Fail with one line (UserError) on the first role whose file is not a readable GGUF."""
    check_roles(paths)
    for path in paths.values():
        check_gguf(Path(path).expanduser())


def load_engine(
    paths: Mapping[str, str | Path], options: LoadOptions = LoadOptions(), on_progress: ProgressFn | None = None
) -> EftEngine:
    """Check every file, then load every role's model (see ``EftEngine.load``)."""
    check_files(paths)
    return EftEngine.load(
        paths,
        n_ctx=options.n_ctx,
        n_gpu_layers=options.n_gpu_layers,
        n_threads=options.n_threads,
        on_progress=on_progress,
        rpc=options.rpc,
        n_seq=options.n_seq,
    )

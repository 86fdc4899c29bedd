"""eft-local: emulated fine-tuning (EFT) on llama.cpp.

The library API (the command line, chat app and server are built on it)::

    from eft_local import EftEngine, GenerationConfig, SamplingParams, Session

Names are imported on first use, so ``import eft_local`` stays cheap (no llama.cpp, no NumPy).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.2.0"

_API = {
    "EftEngine": "eft_local.engine.eft_engine",
    "GenerationConfig": "eft_local.engine.config",
    "Session": "eft_local.engine.session",
    "SamplingParams": "eft_local.mix.params",
    "TokenEvent": "eft_local.engine.events",
    "StatsEvent": "eft_local.engine.events",
    "FinishedEvent": "eft_local.engine.events",
    "UserError": "eft_local.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'eft_local' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

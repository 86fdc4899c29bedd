"""Checked settings -> what one generation needs, for every front end alike.

A front end holds a dict of checked settings (``settings.SETTINGS`` names, plus ``weights``
and ``draft_with``): the command line's flags over a profile's defaults over the built-in
ones. A batch row, a grid point or an HTTP request is a layer on top (``effective_settings``),
and ``generation_config`` turns the result into the engine's ``GenerationConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from eft_local.mix.mixture import CHAT
from eft_local.mix.params import SamplingParams
from eft_local.settings import SETTINGS, BadType, Setting


@dataclass
class GenerationConfig:
    """What one generation runs with. Every field is checked when the object is built: the
    settings among them by their one definition in ``settings`` (as ``SamplingParams``); a bad
    value raises ``ValueError``, one of the wrong type ``TypeError``, naming the field.
    ``max_tokens`` beyond what the context holds is allowed: a generation stops when its
    context is full."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = SETTINGS["max_tokens"].default
    draft_tokens: int | None = SETTINGS["draft_tokens"].default  # None: adaptive; 0: naive EFT; k: fixed block
    stop: tuple[str, ...] = SETTINGS["stop"].default
    trace: bool = False  # compute per-token delta (log p_EFT − log p_base)
    stats_interval: float = 0.25  # seconds between StatsEvents
    draft_with: str | None = None  # delta whose chat model drafts; None: largest |weight|
    logprobs: int | None = None  # per token: its EFT log-probability and this many top alternatives (None: off)

    def __post_init__(self) -> None:
        if not isinstance(self.sampling, SamplingParams):
            raise BadType(f"sampling must be a SamplingParams, got {type(self.sampling).__name__}")
        for name in ("max_tokens", "draft_tokens", "stop", "logprobs"):
            setattr(self, name, SETTINGS[name].check(getattr(self, name), name, strict=True))
        if not isinstance(self.trace, bool):
            raise BadType(f"trace must be true or false, got {self.trace!r}")
        if self.draft_with is not None and not isinstance(self.draft_with, str):
            raise BadType(f"draft_with must be a delta's name or None, got {self.draft_with!r}")
        interval = STATS_INTERVAL.check(self.stats_interval, "stats_interval", strict=True)
        self.stats_interval = interval


# Not a user setting, checked the same way: seconds between StatsEvents (0: after every round).
STATS_INTERVAL = Setting("stats_interval", float, 0.25, "seconds between StatsEvents", lo=0.0)


def effective_settings(base: dict[str, Any], *layers: dict[str, Any]) -> dict[str, Any]:
    """``base`` with each layer's settings on top (grid point, then the JSONL row).

    Delta weights merge by name; a weight for "chat" is α.
    """
    out = dict(base)
    weights = dict(base.get("weights", {}))
    for layer in layers:
        out.update({k: v for k, v in layer.items() if k != "weights"})
        weights.update(layer.get("weights", {}))
    if CHAT in weights:
        out["alpha"] = weights.pop(CHAT)
    out["weights"] = weights
    return out


def generation_config(settings: dict[str, Any]) -> GenerationConfig:
    names = [f.name for f in fields(SamplingParams) if f.name in SETTINGS]
    sampling = SamplingParams(**{k: settings[k] for k in names}, weights=dict(settings["weights"]))
    return GenerationConfig(
        sampling=sampling,
        max_tokens=settings["max_tokens"],
        draft_tokens=settings["draft_tokens"],
        stop=tuple(settings["stop"]),
        draft_with=settings.get("draft_with"),
    )

"""``SamplingParams``: the per-step EFT and sampling values, defaults and ranges from ``settings``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from eft_local.settings import SETTINGS, check_weights


@dataclass(frozen=True)
class SamplingParams:
    """How one EFT step turns three logit rows into a distribution.

    ``top_p_mode="eft"`` applies top-p to the EFT distribution itself (the paper's
    "conservative decoding"); ``"base"`` is DExperts-style: the nucleus is taken from the
    base model alone and the EFT distribution is restricted to it.
    """

    alpha: float = SETTINGS["alpha"].default
    beta: float = SETTINGS["beta"].default
    temperature: float = SETTINGS["temperature"].default
    top_k: int = SETTINGS["top_k"].default
    top_p: float = SETTINGS["top_p"].default
    min_p: float = SETTINGS["min_p"].default
    top_p_mode: str = SETTINGS["top_p_mode"].default
    typical_p: float = SETTINGS["typical_p"].default
    weights: Mapping[str, float] = field(default_factory=dict)  # α of every delta other than "chat"

    def validate(self) -> None:
        """Every value checked by its one definition in ``settings`` (finite, in range)."""
        for f in fields(self):
            if f.name in SETTINGS:
                SETTINGS[f.name].check(getattr(self, f.name))
        check_weights(self.weights, "--weight")

    def weight(self, delta: str) -> float:
        """α of a behaviour delta: ``alpha`` for "chat", else ``weights`` (default 1)."""
        return self.alpha if delta == "chat" else float(self.weights.get(delta, 1.0))

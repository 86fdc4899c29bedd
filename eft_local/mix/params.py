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

    Every value is checked when the object is built, by its one definition in ``settings``
    (type, range, finite): a bad value raises ``ValueError``, a value of the wrong type
    ``TypeError``, with a message naming the field (both are also ``UserError``s).
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

    def __post_init__(self) -> None:
        for name, setting in _CHECKED:
            value = getattr(self, name)
            if not setting.holds(value):
                object.__setattr__(self, name, setting.check(value, name, strict=True))
        object.__setattr__(self, "weights", check_weights(self.weights, "weights", strict=True))

    def validate(self) -> None:
        """Check every value again (they were checked when the object was built)."""
        self.__post_init__()

    def weight(self, delta: str) -> float:
        """α of a behaviour delta: ``alpha`` for "chat", else ``weights`` (default 1)."""
        return self.alpha if delta == "chat" else float(self.weights.get(delta, 1.0))


_CHECKED = tuple((f.name, SETTINGS[f.name]) for f in fields(SamplingParams) if f.name in SETTINGS)

"""Live EFT settings: what the next generation gets, changeable without reloading models."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from eft_local.engine.config import GenerationConfig
from eft_local.mix.mixture import describe as describe_mix
from eft_local.mix.params import SamplingParams
from eft_local.settings import SETTINGS

# name -> (title, alpha, beta); "eft" uses the user's own mix (see ChatSettings.preset).
# The corners set every other delta's weight to 0.
PRESETS = {
    "eft": ("EFT", None, None),
    "chat": ("chat alone", 1.0, 0.0),
    "base": ("base alone", 0.0, 1.0),
}


@dataclass
class ChatSettings:
    sampling: SamplingParams
    speculative: bool = True
    block_size: int | None = None  # None: adaptive block; only used when speculative
    max_tokens: int = SETTINGS["max_tokens"].default
    deltas: tuple[str, ...] = ()  # behaviour deltas besides "chat", by name
    eft_mix: SamplingParams | None = None  # remembered α/β/weights for the "EFT" preset
    stop: tuple[str, ...] = field(default_factory=tuple)
    draft_with: str | None = None  # delta whose chat model drafts (None: largest |weight|)

    @classmethod
    def create(
        cls,
        sampling: SamplingParams | None,
        draft_tokens: int | None,
        max_tokens: int,
        deltas: tuple[str, ...] = (),
        stop: tuple[str, ...] = (),
        draft_with: str | None = None,
    ) -> ChatSettings:
        sampling = sampling or SamplingParams()
        sampling = replace(sampling, weights={d: float(sampling.weights.get(d, 1.0)) for d in deltas})
        settings = cls(
            sampling=sampling,
            speculative=draft_tokens != 0,
            block_size=draft_tokens or None,
            max_tokens=max_tokens,
            deltas=tuple(deltas),
            stop=tuple(stop),
            draft_with=draft_with,
        )
        settings.eft_mix = (
            sampling if settings.mode == "eft" else replace(sampling, alpha=1.0, beta=1.0, weights=dict.fromkeys(deltas, 1.0))
        )
        return settings

    def corner(self, alpha: float, beta: float, only: str | None = None) -> SamplingParams:
        """This sampling with α, β set and every other delta at 0 (``only`` keeps its weight)."""
        weights = {d: (self.sampling.weights.get(d, 1.0) if d == only else 0.0) for d in self.deltas}
        return replace(self.sampling, alpha=alpha, beta=beta, weights=weights)

    @property
    def draft_tokens(self) -> int | None:
        """GenerationConfig.draft_tokens: 0 naive, None adaptive, k fixed."""
        return (self.block_size or None) if self.speculative else 0

    def config(self, *, trace: bool = True, sampling: SamplingParams | None = None) -> GenerationConfig:
        return GenerationConfig(
            sampling=sampling or self.sampling,
            max_tokens=self.max_tokens,
            draft_tokens=self.draft_tokens,
            stop=self.stop,
            trace=trace,
            draft_with=self.draft_with,
        )

    def preset(self, name: str) -> None:
        """Switch to a preset; a mix that is not a corner is remembered for "EFT"."""
        _, alpha, beta = PRESETS[name]
        if self.mode == "eft":
            self.eft_mix = self.sampling
        if alpha is None:
            mix = self.eft_mix or self.sampling
            self.sampling = replace(self.sampling, alpha=mix.alpha, beta=mix.beta, weights=dict(mix.weights))
        else:
            self.sampling = self.corner(alpha, beta)

    @property
    def mode(self) -> str:
        s = self.sampling
        if any(s.weights.get(d, 1.0) != 0.0 for d in self.deltas):
            return "eft"
        return {(1.0, 0.0): "chat", (0.0, 1.0): "base"}.get((s.alpha, s.beta), "eft")

    def mix(self) -> str:
        """α, β and every delta's weight, e.g. ``α=1 β=1 safe=0.5``."""
        s = self.sampling
        return describe_mix({d: s.weights.get(d, 1.0) for d in self.deltas}, s.alpha, s.beta)

    def describe(self) -> str:
        return self.describe_forms()[0]

    def describe_forms(self) -> tuple[str, str, str]:
        """``EFT α=1 β=1 T=0.7 top-p=0.95 spec adaptive``, then without speculation, then the mode."""
        s = self.sampling
        spec = "off" if not self.speculative else f"k={self.block_size}" if self.block_size else "adaptive"
        temp = "greedy" if s.temperature == 0 else f"T={s.temperature:g}"
        top_p = f" top-p={s.top_p:g}" if s.top_p < 1 else ""
        mode = PRESETS[self.mode][0]
        short = f"{mode} {self.mix()} {temp}{top_p}"
        return f"{short} spec {spec}", short, mode

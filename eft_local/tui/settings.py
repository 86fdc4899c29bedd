"""Live EFT settings: what the next generation gets, changeable without reloading models."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..decoder import GenerationConfig
from ..sampling import SamplingParams

# name -> (alpha, beta); "eft" uses the user's own α/β (see ChatSettings.preset).
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
    max_tokens: int = 512
    eft_alpha: float = 1.0  # remembered α/β for the "EFT" preset
    eft_beta: float = 1.0

    @classmethod
    def create(cls, sampling: SamplingParams | None, draft_tokens: int | None, max_tokens: int) -> ChatSettings:
        sampling = sampling or SamplingParams()
        return cls(
            sampling=sampling,
            speculative=draft_tokens != 0,
            block_size=draft_tokens or None,
            max_tokens=max_tokens,
            eft_alpha=sampling.alpha if (sampling.alpha, sampling.beta) not in ((1.0, 0.0), (0.0, 1.0)) else 1.0,
            eft_beta=sampling.beta if (sampling.alpha, sampling.beta) not in ((1.0, 0.0), (0.0, 1.0)) else 1.0,
        )

    @property
    def draft_tokens(self) -> int | None:
        """GenerationConfig.draft_tokens: 0 naive, None adaptive, k fixed."""
        return (self.block_size or None) if self.speculative else 0

    def config(self, *, trace: bool = True, sampling: SamplingParams | None = None) -> GenerationConfig:
        return GenerationConfig(
            sampling=sampling or self.sampling,
            max_tokens=self.max_tokens,
            draft_tokens=self.draft_tokens,
            trace=trace,
        )

    def preset(self, name: str) -> None:
        """Switch to a preset; α/β that are not a corner are remembered for "EFT"."""
        _, alpha, beta = PRESETS[name]
        if self.mode == "eft":
            self.eft_alpha, self.eft_beta = self.sampling.alpha, self.sampling.beta
        if alpha is None:
            alpha, beta = self.eft_alpha, self.eft_beta
        self.sampling = replace(self.sampling, alpha=alpha, beta=beta)

    @property
    def mode(self) -> str:
        a, b = self.sampling.alpha, self.sampling.beta
        return {(1.0, 0.0): "chat", (0.0, 1.0): "base"}.get((a, b), "eft")

    def describe(self) -> str:
        s = self.sampling
        spec = "off" if not self.speculative else f"k={self.block_size}" if self.block_size else "adaptive"
        temp = "greedy" if s.temperature == 0 else f"T={s.temperature:g}"
        top_p = f" top-p={s.top_p:g}" if s.top_p < 1 else ""
        return f"{PRESETS[self.mode][0]} α={s.alpha:g} β={s.beta:g} {temp}{top_p} spec {spec}"

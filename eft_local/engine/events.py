"""What the decoder yields. Batch mode and the TUI consume the same stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from eft_local.errors import UserError
from eft_local.mix.logprobs import TokenLogprob
from eft_local.settings import advice, cli_name

FINISH_REASONS = ("stop", "length", "cancelled", "error")


@dataclass
class GenStats:
    """Running totals of one generation."""

    n_tokens: int = 0
    prompt_tokens: dict[str, int] = field(default_factory=dict)
    prompt_seconds: float = 0.0
    seconds: float = 0.0  # wall time so far, prompt processing included
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    draft_tokens: int = 0  # block length used in the last round (0 = naive)

    def snapshot(self) -> GenStats:
        """A copy that later rounds do not change (what events carry)."""
        return replace(self, prompt_tokens=dict(self.prompt_tokens))

    @property
    def decode_seconds(self) -> float:
        return max(self.seconds - self.prompt_seconds, 1e-9)

    @property
    def tokens_per_second(self) -> float:
        """Generation speed, prompt processing excluded."""
        return self.n_tokens / self.decode_seconds if self.n_tokens else 0.0

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


@dataclass
class TokenEvent:
    token_id: int
    text: str  # text this token made visible (may be "" while UTF-8 or a stop string is pending)
    delta: float | None = None  # log p_EFT(token) − log p_base(token), when traced
    logprob: TokenLogprob | None = None  # log p_EFT(token) at T = 1 and its top alternatives (config.logprobs)


@dataclass
class StatsEvent:
    stats: GenStats


@dataclass
class FinishedEvent:
    reason: str  # one of FINISH_REASONS
    text: str
    token_ids: list[int]
    stats: GenStats
    error: str | None = None  # the fact, as a library caller reads it
    cause: UserError | None = field(default=None, repr=False)  # the error itself: a front end words its advice

    def error_text(self, name: Callable[[str], str] = cli_name) -> str | None:
        """The error with a front end's advice (``settings.advice``): settings named by ``name``."""
        return advice(self.cause, name) if self.cause is not None else self.error


Event = TokenEvent | StatsEvent | FinishedEvent

"""Adaptive speculative block length from measured acceptance and measured costs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DraftController:
    """Chooses k (tokens the chat model drafts per round) to maximize tokens per second.

    With per-token acceptance rate a, a round of k drafts yields (1 − a^(k+1)) / (1 − a)
    tokens on average and costs k·c (drafting) + v (verification by base and reference),
    both measured as exponential moving averages. Full acceptance pushes a toward 1 and
    k up; early rejections pull k down.
    """

    k_max: int = 16
    k_init: int = 4
    decay: float = 0.8
    accepted: float = 3.0  # EMA-weighted counts: prior of acceptance 0.75
    rejected: float = 1.0
    draft_cost: float | None = None  # seconds per drafted token
    verify_cost: float | None = None  # seconds per verification round

    def next_k(self) -> int:
        if self.draft_cost is None or self.verify_cost is None:
            return self.k_init
        a = min(self.accepted / max(self.accepted + self.rejected, 1e-9), 0.999)
        c, v = self.draft_cost, self.verify_cost
        return max(range(1, self.k_max + 1), key=lambda k: (1 - a ** (k + 1)) / (1 - a) / (k * c + v))

    def update(self, drafted: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        if drafted <= 0:
            return
        d = self.decay
        self.accepted = d * self.accepted + accepted
        self.rejected = d * self.rejected + (1 if accepted < drafted else 0)
        per_draft = draft_seconds / drafted
        self.draft_cost = per_draft if self.draft_cost is None else d * self.draft_cost + (1 - d) * per_draft
        self.verify_cost = verify_seconds if self.verify_cost is None else d * self.verify_cost + (1 - d) * verify_seconds

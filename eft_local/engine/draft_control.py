"""Adaptive speculative block length from observed acceptance and the models' costs."""

from __future__ import annotations

from dataclasses import dataclass

# The longest block adaptive drafting chooses. A fixed ``--draft-tokens`` may go up to its
# own bound in ``settings`` (a user's explicit choice); adaptive k stops here because beyond
# ~16 drafts even 0.99 acceptance gains little and a rejection wastes the whole block.
K_MAX = 16
ACCEPTANCE_CAP = 0.995  # no text is predicted perfectly: keeps the expected block finite


@dataclass
class DraftController:
    """Chooses k (tokens the chat model drafts per round) to maximize tokens per unit cost.

    With per-token acceptance rate a, a round of k drafts yields (1 − a^(k+1)) / (1 − a)
    tokens on average and costs k·c (drafting) + v·(1 + g·k) (one batched verification by
    base and reference, a little dearer per extra token). Costs are *relative* — decoding
    is memory-bound, so model size in bytes stands in for time — which keeps the choice of
    k, and so a seeded run, deterministic (wall-clock timings would make reruns differ).
    Acceptance is an exponentially weighted count, so k follows the text: full acceptance
    pushes it up, early rejections pull it down.
    """

    draft_cost: float = 1.0
    verify_cost: float = 10.0
    verify_growth: float = 0.05
    k_max: int = K_MAX
    decay: float = 0.8
    accepted: float = 3.0  # prior: acceptance 0.75
    rejected: float = 1.0
    # Cost of one token without the drafter (the verifiers alone), or None when the drafter
    # is part of the mixture itself (then every token needs it and drafting is free to try).
    direct_cost: float | None = None
    probe_every: int = 16  # one-model tokens between drafting rounds that re-measure acceptance
    _direct_left: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / max(self.accepted + self.rejected, 1e-9)

    def rate(self, k: int, acceptance: float | None = None) -> float:
        """Expected tokens per unit cost of a round of k drafts."""
        a = min(self.acceptance if acceptance is None else acceptance, ACCEPTANCE_CAP)
        c, v, g = self.draft_cost, self.verify_cost, self.verify_growth
        return (1 - a ** (k + 1)) / (1 - a) / (k * c + v * (1 + g * k))

    def next_k(self) -> int:
        return max(range(1, self.k_max + 1), key=self.rate)

    def direct(self) -> bool:
        """True: this token is cheaper from the mixture's own models, drafter skipped.

        Drafting pays when its best round yields more tokens per cost than one token of the
        verifiers alone. When even perfect acceptance could not pay (a drafter as dear as
        the verifiers: one file in every role) that holds for good; otherwise a drafting
        round every ``probe_every`` tokens re-measures acceptance. Decided from acceptance
        and relative costs only, so a seeded rerun makes the same choices.
        """
        if self.direct_cost is None:
            return False
        if self._direct_left > 0:  # within a one-model stretch; its last call is the probe
            self._direct_left -= 1
            return self._direct_left > 0
        direct_rate = 1.0 / self.direct_cost
        if max(self.rate(k, ACCEPTANCE_CAP) for k in range(1, self.k_max + 1)) <= direct_rate:
            return True
        if self.rate(self.next_k()) >= direct_rate:
            return False
        self._direct_left = self.probe_every
        return True

    def update(self, drafted: int, accepted: int) -> None:
        """A round drafted ``drafted`` tokens and the first ``accepted`` of them were kept."""
        if drafted <= 0:
            return
        d = self.decay
        self.accepted = d * self.accepted + accepted
        self.rejected = d * self.rejected + (1 if accepted < drafted else 0)


def batch_cost(b: int, growth: float, jump: float) -> float:
    """Cost of decoding b tokens at once, relative to one token: 1 + jump + growth·(b − 1)
    for b > 1 (a CPU leaves its one-token matrix-vector kernel for a dearer matrix one)."""
    return 1.0 if b <= 1 else 1.0 + jump + growth * (b - 1)


def batch_k(controllers: list[DraftController], growth: float, jump: float = 0.0) -> int:
    """One block length for n sequences drafted and verified together.

    Maximises the expected tokens of all of them per cost of the round: k drafting steps of
    n tokens each and one verification of n·(k + 1) tokens, each decode costing
    ``batch_cost``. With n = 1 and no jump this is ``next_k``'s formula. Equal blocks also
    keep llama.cpp's per-sequence KV streams in one compute pass.
    """
    if not controllers:
        return 1
    n = len(controllers)
    accs = [min(ctl.acceptance, ACCEPTANCE_CAP) for ctl in controllers]
    c = sum(ctl.draft_cost for ctl in controllers) / n
    v = sum(ctl.verify_cost for ctl in controllers) / n
    k_max = max(ctl.k_max for ctl in controllers)

    def rate(k: int) -> float:
        tokens = sum((1 - a ** (k + 1)) / (1 - a) for a in accs)
        return tokens / (k * c * batch_cost(n, growth, jump) + v * batch_cost(n * (k + 1), growth, jump))

    return max(range(1, k_max + 1), key=rate)

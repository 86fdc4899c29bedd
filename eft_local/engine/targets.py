"""The distributions at one position of a round, from the rows its models returned there.

``drafted`` is q (the drafter's proposal: its filtered distribution over its row's head), ``target`` is p (the EFT
distribution: every weighted row combined, masked, filtered) together with the combined row
it was filtered from, and for the emitted token ``delta`` (how far the fine-tuning moved it,
for the app's delta view) and ``logprob`` (its log-probability at T = 1, no filters, for the
API), both from that combined row. Pure NumPy, no state between calls: every row comes in as
an argument and goes out as a value. The run decides what to draw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from eft_local.llama.vocab import SharedVocab
from eft_local.mix.logprobs import TokenLogprob, token_logprobs
from eft_local.mix.params import SamplingParams
from eft_local.mix.sampling import Dist, base_nucleus, combine, distribution, eft_distribution, proposal, token_logprob

Rows = Mapping[str, np.ndarray]  # model name -> its logits row at one position


class Target(NamedTuple):
    """p at one position, and the combined masked row ``z`` it was filtered from (T = 1)."""

    p: Dist
    z: np.ndarray


class Targets:
    def __init__(self, plan, params: SamplingParams, vocab: SharedVocab, *, logprobs: int | None, trace: bool) -> None:
        self.plan = plan  # a generation.ModelPlan: which rows weigh what
        self.params = params
        self.n = vocab.n
        self.mask = vocab.masked
        self.top_logprobs = logprobs
        self.trace = trace

    def drafted(self, row: np.ndarray, params: SamplingParams) -> Dist:
        """The proposal q a draft is drawn from: the drafter's filtered distribution over the
        head of its row (``mix.sampling.proposal``: speculative sampling is exact for any q,
        and this one costs a fraction of a full softmax) — or all of it when the drafter alone
        is the target, whose drafts stand untested (q must then be p)."""
        if not self.plan.p_is_q:
            return proposal(row[: self.n], params, self.mask)
        if not self.mask.size:  # nothing to mask: filter the row itself (filters never write to it)
            return distribution(row[: self.n], params)
        return eft_distribution([row], [1.0], params, self.n, self.mask)

    def target(self, rows: Rows) -> Target:
        """The EFT distribution p at a position, from every weighted model's row there."""
        z = self.combined(rows)
        base = rows.get(self.plan.base)
        allowed = base_nucleus(base, self.n, self.params) if base is not None else None  # DExperts top-p mode
        return Target(distribution(z, self.params, allowed), z)

    def combined(self, rows: Rows) -> np.ndarray:
        """z = Σ weight · row over the weighted models, masked ids at -inf (a new array)."""
        z = combine([rows[name] for name in self.plan.names], self.plan.weights, np.empty(self.n, np.float32))
        if self.mask.size:
            z[self.mask] = -np.inf
        return z

    def wants_z(self, rows: Rows) -> bool:
        """Whether ``delta`` or ``logprob`` will read the combined row at this position."""
        return (self.trace and self.plan.base in rows) or self.top_logprobs is not None

    def delta(self, z: np.ndarray, rows: Rows, token: int) -> float | None:
        """How much the fine-tuning delta moved this token: log p_EFT − log p_base at T = 1."""
        if not self.trace or self.plan.base not in rows:
            return None
        return token_logprob(z, token, self.n) - token_logprob(rows[self.plan.base], token, self.n)

    def logprob(self, z: np.ndarray, token: int) -> TokenLogprob | None:
        """The token's log-probability under the EFT distribution at T = 1, no filters, from the
        rows this round's verification already holds (no extra model calls)."""
        if self.top_logprobs is None:
            return None
        return token_logprobs(z, token, self.top_logprobs)

"""The distributions at one position of a round, from the rows its models returned.

``drafted`` is q (the drafter's own filtered distribution), ``target`` is p (the EFT
distribution: every weighted row combined, masked, filtered), and for the emitted token
``delta`` (how far the fine-tuning moved it, for the app's delta view) and ``logprob`` (its
log-probability at T = 1, no filters, for the API). Pure NumPy; the run decides what to draw.

The scratch row ``z`` is shared on purpose: ``delta`` reads the combined row that the last
``target`` (or the masked ``drafted`` row, when the drafter alone is the target) left there.
"""

from __future__ import annotations

import numpy as np

from eft_local.llama.vocab import SharedVocab
from eft_local.mix.logprobs import TokenLogprob, token_logprobs
from eft_local.mix.params import SamplingParams
from eft_local.mix.sampling import Dist, combine, distribution, eft_distribution, token_logprob


class Targets:
    def __init__(
        self, plan, params: SamplingParams, vocab: SharedVocab, z: np.ndarray, *, logprobs: int | None, trace: bool
    ) -> None:
        self.plan = plan  # a decoder.ModelPlan: which rows weigh what
        self.params = params
        self.n = vocab.n
        self.mask = vocab.masked
        self._masked_ids = frozenset(self.mask.tolist())
        self._z = z
        self._lp_z = np.empty(self.n, np.float32) if logprobs is not None else None
        self.top_logprobs = logprobs
        self.trace = trace
        self._z_holds: tuple[dict, int] | None = None  # (rows, i) whose combined row z holds

    def drafted(self, row: np.ndarray, params: SamplingParams) -> Dist:
        """The drafter's own distribution q (one model: its row, masked, filtered)."""
        if not self.mask.size:  # nothing to mask: filter the row itself (filters never write to it)
            return distribution(row[: self.n], params)
        if params.temperature == 0 and not self.plan.p_is_q:  # (p_is_q: delta reads the masked row from z)
            best = int(np.argmax(row[: self.n]))  # the masked row's argmax too, unless it is masked itself
            if best not in self._masked_ids:
                return Dist(np.array([best]), np.ones(1))
        self._z_holds = None  # z becomes the masked drafter row
        return eft_distribution([row], [1.0], params, self.n, self.mask, self._z)

    def target(self, rows: dict[str, list[np.ndarray]], i: int) -> Dist:
        """The EFT distribution p at position i of the round."""
        plan = self.plan
        base = rows[plan.base][i] if plan.base in rows else None
        self._z_holds = (rows, i)
        return eft_distribution(
            [rows[name][i] for name in plan.names], plan.weights, self.params, self.n, self.mask, self._z, base
        )

    def delta(self, rows: dict[str, list[np.ndarray]], i: int, token: int) -> float | None:
        """How much the fine-tuning delta moved this token: log p_EFT − log p_base at T = 1."""
        if not self.trace or self.plan.base not in rows:
            return None
        return token_logprob(self._z, token, self.n) - token_logprob(rows[self.plan.base][i], token, self.n)

    def logprob(self, rows: dict[str, list[np.ndarray]], i: int, token: int) -> TokenLogprob:
        """The token's log-probability under the EFT distribution at T = 1, no filters, from the
        rows this round's verification already holds (no extra model calls). When ``target``
        just combined this position, its row is reused (filters never write to it)."""
        held = self._z_holds
        if held is not None and held[0] is rows and held[1] == i:
            return token_logprobs(self._z, token, self.top_logprobs)
        z = combine([rows[name][i] for name in self.plan.names], self.plan.weights, self._lp_z)
        if self.mask.size:
            z[self.mask] = -np.inf
        return token_logprobs(z, token, self.top_logprobs)

"""The EFT decoder: naive (one step per token) and exact speculative decoding.

Invariant between rounds: every model's KV cache holds the accepted sequence except its
last token, which is ``pending``. A round feeds ``pending`` (+ drafts) to each model, so
the large base model runs exactly one batched decode per round — never an extra one to
catch up after a rejection. With k = 0 drafts a round is one naive EFT step. Right after
the prompt nothing is pending: the prompt was evaluated whole (as plain llama.cpp does,
so greedy corners reproduce it bit for bit) and its last logits row is ``held``.

Round with k drafts (Leviathan/Chen speculative sampling, target = the EFT distribution):
1. chat drafts x1..xk from its own filtered distribution q_i (kept);
2. base and reference evaluate [pending, x1..xk] in one batch each -> k+1 logit rows;
3. accept x_i with prob min(1, p_i(x_i)/q_i(x_i)); on the first rejection resample from
   norm(max(0, p_i − q_i)) and stop; if all pass, draw a bonus token from p_{k+1};
4. roll every cache back to the accepted prefix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import rpc as rpc_defaults
from .draft_control import DraftController
from .errors import Cancelled, UserError
from .events import Event, FinishedEvent, GenStats, StatsEvent, TokenEvent
from .llama_adapter import LlamaModel
from .profiles import ROLES
from .prompts import role_prompts
from .sampling import Dist, SamplingParams, accept, distribution, eft_distribution, residual, sample, token_logprob
from .textstream import TextStream
from .vocab import SharedVocab, check_vocab

MAX_DRAFT = 16


@dataclass
class GenerationConfig:
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 256
    draft_tokens: int | None = None  # None: adaptive; 0: naive EFT; k: fixed block
    stop: tuple[str, ...] = ()
    trace: bool = False  # compute per-token delta (log p_EFT − log p_base)
    stats_interval: float = 0.25  # seconds between StatsEvents


class EftEngine:
    """Three llama.cpp models behind one generate() that yields events."""

    def __init__(self, models: Mapping[str, LlamaModel]) -> None:
        missing = [r for r in ROLES if r not in models]
        if missing:
            raise UserError(f"missing model for role(s): {', '.join(missing)}")
        self.models = dict(models)
        self.vocab: SharedVocab = check_vocab(self.models)
        self.can_rollback = all(m.supports_rollback for m in self.models.values())
        sizes = {r: m.size_bytes for r, m in self.models.items()}
        self.costs = (sizes["chat"], sizes["base"] + sizes["reference"])
        self._z = np.empty(self.vocab.n, np.float32)

    @classmethod
    def load(
        cls,
        paths: Mapping[str, str | Path],
        *,
        n_ctx: int = 4096,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
        on_progress: Callable[[str, float], None] | None = None,
        rpc: Mapping[str, Sequence[str]] | None = None,
    ) -> EftEngine:
        """Load the three roles. A file named for two roles is loaded twice: each role needs
        its own context and KV cache (the weights are memory-mapped, so shared in RAM).
        ``rpc``: role -> llama.cpp RPC servers for its layers (default: ``rpc.default_endpoints``)."""
        rpc = rpc_defaults.default_endpoints if rpc is None else rpc
        loaded: dict[str, LlamaModel] = {}
        try:
            for role in ROLES:
                cb = (lambda f, r=role: on_progress(r, f)) if on_progress else None
                loaded[role] = LlamaModel(
                    Path(paths[role]).expanduser(), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=n_threads, progress=cb,
                    rpc_servers=rpc.get(role, ()),
                )
            return cls(loaded)
        except BaseException:
            for m in loaded.values():
                m.close()
            raise

    def reset(self) -> None:
        """Empty every KV cache (after a failed decode left one in an unknown state)."""
        for m in self.models.values():
            m.rollback(0)

    def close(self) -> None:
        for m in self.models.values():
            m.close()

    @property
    def chat(self) -> LlamaModel:
        return self.models["chat"]

    def prompt(self, *, messages=None, raw: str | None = None, style: str = "template") -> dict[str, list[int]]:
        return role_prompts(self.models, messages=messages, raw=raw, style=style)

    def fit_prompt(self, messages, *, style: str = "template", reserve: int = 256) -> tuple[dict[str, list[int]], int]:
        """The prompt for the most recent turns that leave ``reserve`` tokens free in every
        context: the oldest non-system messages are dropped first. Returns (prompt, #dropped)."""
        messages = list(messages)
        system = [m for m in messages if m["role"] == "system"][:1]
        rest = [m for m in messages if m not in system]
        for dropped in range(len(rest)):
            prompt = self.prompt(messages=system + rest[dropped:], style=style)
            if all(len(prompt[r]) + reserve <= m.n_ctx for r, m in self.models.items()):
                return prompt, dropped
        raise UserError(f"the last message alone does not fit in n_ctx {self.chat.n_ctx} with {reserve} tokens to answer; raise --n-ctx")

    def context_used(self) -> dict[str, tuple[int, int]]:
        return {r: (m.n_past, m.n_ctx) for r, m in self.models.items()}

    def generate(
        self,
        prompt: Mapping[str, list[int]],
        config: GenerationConfig,
        rng: np.random.Generator,
        cancel: Callable[[], bool] | None = None,
    ) -> Iterator[Event]:
        """Yield TokenEvents, periodic StatsEvents and one FinishedEvent."""
        run = _Run(self, prompt, config, rng, cancel or (lambda: False))
        yield from run.events()


class _Run:
    """State of one generation (kept off EftEngine so the engine stays reusable)."""

    def __init__(self, engine: EftEngine, prompt, config: GenerationConfig, rng, cancel) -> None:
        self.e = engine
        self.cfg = config
        self.params = config.sampling
        self.draft_params = replace(config.sampling, alpha=1.0, beta=0.0, top_p_mode="eft")
        # Three uniforms per output position: draft draw, acceptance test, resample draw.
        self.u = rng.random((config.max_tokens + MAX_DRAFT + 2, 3))
        self.controller = DraftController(draft_cost=engine.costs[0], verify_cost=engine.costs[1], k_max=MAX_DRAFT)
        self.cancel = cancel
        self.prompt = {r: list(prompt[r]) for r in ROLES}
        self.stats = GenStats(prompt_tokens={r: len(t) for r, t in self.prompt.items()})
        self.stream = TextStream(config.stop)
        self.token_ids: list[int] = []
        self.t0 = time.perf_counter()
        self._last_stats = self.t0
        self.n = engine.vocab.n
        self.mask = engine.vocab.masked
        self._z = engine._z

    # -- driver ---------------------------------------------------------------------------
    def events(self) -> Iterator[Event]:
        reason, error = "length", None
        try:
            self._check_prompt()
            self._prefill()
            self.stats.prompt_seconds = time.perf_counter() - self.t0
            reason = yield from self._loop()
        except Cancelled:
            reason = "cancelled"
        except UserError as e:
            reason, error = "error", str(e)
        tail = self.stream.flush()
        if tail:
            yield TokenEvent(-1, tail)
        self.stats.seconds = time.perf_counter() - self.t0
        yield FinishedEvent(reason, self.stream.text, list(self.token_ids), self.stats, error)

    def _check_prompt(self) -> None:
        for role, toks in self.prompt.items():
            model = self.e.models[role]
            if not toks:
                raise UserError("empty prompt: nothing to generate from")
            if len(toks) >= model.n_ctx:
                raise UserError(
                    f"prompt is {len(toks)} tokens for {role} but n_ctx is {model.n_ctx}; raise --n-ctx or shorten the prompt"
                )
            bad = [t for t in toks if not 0 <= t < model.n_vocab]
            if bad:
                raise UserError(f"prompt token id {bad[0]} is outside {role}'s vocabulary")

    def _prefill(self) -> None:
        """Evaluate each role's prompt, reusing what its cache already holds; keep the last row."""
        self.pending: dict[str, list[int]] = {}
        self.held: dict[str, np.ndarray] = {}
        for role in ROLES:
            self.held[role] = self.e.models[role].prefill(self.prompt[role], self.cancel).copy()
            self.pending[role] = []

    def _rows(self, role: str, drafts: list[int]) -> list[np.ndarray]:
        """Logit rows for positions 1..len(drafts)+1 of this round (views where possible)."""
        model, pending = self.e.models[role], self.pending[role]
        if pending:
            return list(model.eval(pending + drafts, len(drafts) + 1))
        rows = [self.held.pop(role)]
        if drafts:
            rows += list(model.eval(drafts, len(drafts)))
        return rows

    def _loop(self) -> Iterator[Event]:
        fixed = self.cfg.draft_tokens
        if fixed and not self.e.can_rollback:
            raise UserError("speculative decoding needs models whose cache can be trimmed (not recurrent/hybrid); use --draft-tokens 0")
        speculative = self.e.can_rollback and fixed != 0
        while True:
            if self.cancel():
                return "cancelled"
            left = self.cfg.max_tokens - self.stats.n_tokens
            room = min(m.n_ctx - m.n_past - len(self.pending[r]) for r, m in self.e.models.items())
            if left <= 0 or room < 0:
                return "length"
            k = (fixed if fixed is not None else self.controller.next_k()) if speculative else 0
            k = max(0, min(k, left - 1, room))
            finished = yield from self._round(k)
            if finished:
                return "stop"
            now = time.perf_counter()
            if now - self._last_stats >= self.cfg.stats_interval:
                self._last_stats = now
                self.stats.seconds = now - self.t0
                yield StatsEvent(self.stats)

    # -- one round --------------------------------------------------------------------------
    def _round(self, k: int) -> Iterator[Event]:
        chat = self.e.chat
        n0 = {r: m.n_past for r, m in self.e.models.items()}
        pos = len(self.token_ids)  # index into the per-position uniforms
        chat_rows, drafts, qs = self._draft(chat, k, pos)
        base_rows = self._rows("base", drafts)
        ref_rows = self._rows("reference", drafts)
        accepted: list[int] = []
        deltas: list[float | None] = []
        for i, x in enumerate(drafts):
            tok = self._verify(base_rows[i], chat_rows[i], ref_rows[i], qs[i], x, pos + i)
            accepted.append(tok)
            deltas.append(self._delta(base_rows[i], tok))
            if tok != x or chat.is_eog(x):
                break
        else:  # every draft passed: one more token from the chat row after the last draft
            i = len(drafts)
            if drafts:
                chat_rows.append(chat.eval([drafts[-1]], 1)[0].copy())
            q = self._filtered(chat_rows[i], self.draft_params)
            tok = self._verify(base_rows[i], chat_rows[i], ref_rows[i], q, sample(q, self.u[pos + i, 0]), pos + i)
            accepted.append(tok)
            deltas.append(self._delta(base_rows[i], tok))
        if k:
            self._account(k, len(drafts), sum(a == d for a, d in zip(accepted, drafts)))
        for r, m in self.e.models.items():
            m.rollback(n0[r] + len(self.pending[r]) + len(accepted) - 1)
            self.pending[r] = [accepted[-1]]
        return (yield from self._emit(accepted, deltas))

    def _verify(self, base_row, chat_row, ref_row, q: Dist, x: int, pos: int) -> int:
        """Keep x (drawn from q) with prob min(1, p/q), else resample from norm(max(0, p − q)).

        Every position — drafted or not, naive or speculative — is drawn this way from its
        own three uniforms, so a seeded run emits the same tokens whatever the block length.
        """
        p = self._target(base_row, chat_row, ref_row)
        if accept(p, q, x, self.u[pos, 1]):
            return x
        return sample(residual(p, q), self.u[pos, 2])

    def _draft(self, chat: LlamaModel, k: int, pos: int) -> tuple[list[np.ndarray], list[int], list[Dist]]:
        """Chat model drafts up to k tokens; returns its logit rows, drafts, and each q_i."""
        pending = self.pending["chat"]
        rows = [chat.eval(pending, 1)[0].copy() if pending else self.held.pop("chat")]
        drafts: list[int] = []
        qs: list[Dist] = []
        for i in range(k):
            q = self._filtered(rows[i], self.draft_params)
            x = sample(q, self.u[pos + i, 0])
            drafts.append(x)
            qs.append(q)
            if i == k - 1 or chat.is_eog(x):
                break
            rows.append(chat.eval([x], 1)[0].copy())
        return rows, drafts, qs

    def _filtered(self, row: np.ndarray, params: SamplingParams) -> Dist:
        z = self._z
        np.copyto(z, row[: self.n])
        if self.mask.size:
            z[self.mask] = -np.inf
        return distribution(z, params)

    def _target(self, base_row, chat_row, ref_row) -> Dist:
        return eft_distribution(base_row, chat_row, ref_row, self.params, self.n, self.mask, self._z)

    def _delta(self, base_row: np.ndarray, token: int) -> float | None:
        """How much the fine-tuning delta moved this token: log p_EFT − log p_base at T = 1."""
        if not self.cfg.trace:
            return None
        return token_logprob(self._z, token, self.n) - token_logprob(base_row, token, self.n)

    def _account(self, k: int, drafted: int, n_acc: int) -> None:
        self.stats.drafted += drafted
        self.stats.accepted += n_acc
        self.stats.rounds += 1
        self.stats.draft_tokens = k
        self.controller.update(drafted, n_acc)

    def _emit(self, tokens: list[int], deltas: list[float | None]) -> Iterator[Event]:
        chat = self.e.chat
        for tok, delta in zip(tokens, deltas):
            if chat.is_eog(tok):
                return True
            self.token_ids.append(tok)
            self.stats.n_tokens += 1
            yield TokenEvent(tok, self.stream.feed(chat.piece(tok)), delta)
            if self.stream.stopped:
                return True
        return False

"""One generation: the prompt, then rounds of naive or exact speculative EFT decoding.

Invariant between rounds: every model's KV cache holds the accepted sequence except its
last token, which is ``pending``. A round feeds ``pending`` (+ drafts) to each model, so
the large base model runs exactly one batched decode per round — never an extra one to
catch up after a rejection. With k = 0 drafts a round is one naive EFT step. Right after
the prompt nothing is pending: the prompt was evaluated whole (as plain llama.cpp does,
so greedy corners reproduce it bit for bit) and its last logits row is ``held``.

A round with k drafts (Leviathan/Chen speculative sampling, target = the EFT distribution),
``Generation._round``:

1. draft: the drafter drafts x_1..x_k, each from a proposal q_i: its filtered distribution
   over the head of its row (any q keeps the output exact; this one is cheap and close to p);
2. verify: every other model evaluates [pending, x_1..x_k] in one batch -> k+1 logit rows;
3. accept: x_i stands with probability min(1, p_i(x_i)/q_i(x_i)); the first that does not is
   replaced by a draw from norm(max(0, p_i − q_i)) and ends the round; when all stand, a
   bonus token is drawn at position k+1;
4. commit: every cache keeps the accepted prefix; the last token becomes ``pending``.

Every position of a speculative run draws from its own three uniforms (draft, accept,
resample), so a seeded run emits the same tokens whatever the block length; a naive run
(``draft_tokens`` 0) draws each token from p directly with the first (the same distribution,
another stream, one distribution per token instead of two).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from eft_local.engine.config import GenerationConfig
from eft_local.engine.draft_control import K_MAX, DraftController
from eft_local.engine.events import Event, FinishedEvent, GenStats, StatsEvent, TokenEvent
from eft_local.engine.prompt_check import check_prompt
from eft_local.engine.targets import Targets
from eft_local.engine.textstream import TextStream
from eft_local.errors import Cancelled, UserError
from eft_local.mix.logprobs import TokenLogprob
from eft_local.mix.mixture import BASE, pick_drafter
from eft_local.mix.params import SamplingParams
from eft_local.mix.sampling import Dist, accept, base_nucleus_needed, residual, sample
from eft_local.settings import Fixable

EftEngine = Any  # an eft_engine.EftEngine (which imports this module: named, not imported)


@dataclass(frozen=True)
class Eval:
    """One evaluation a generation needs next: append ``tokens`` to model ``name``'s cache
    (this generation's sequence) and hand back the logits of the last ``n_logits`` positions.

    ``light`` marks a drafter step of one token: a scheduler runs those for every sequence
    before the heavy batches (verification, prompt chunks), so that each model verifies
    every sequence's block in one decode.
    """

    name: str
    tokens: list[int]
    n_logits: int = 1
    light: bool = False
    solo: bool = False  # a prompt chunk evaluated in a decode of its own (as a lone run does: same rounding)


Steps = Generator[list[Eval], list[np.ndarray], None]
Rows = dict[str, list[np.ndarray]]  # model name -> its logits rows at positions 0, 1, … of a round


@dataclass(frozen=True)
class ModelPlan:
    """Which models a generation runs, with what weight, and who drafts.

    Only the models that matter run: those with a nonzero weight in the expanded formula
    (``names``/``weights``), the drafter, and the base when its nucleus restricts sampling
    (DExperts). ``p_is_q``: the drafter alone at weight 1 (compare's "chat alone"), so its
    draft is the target and every draft stands.
    """

    drafter: str
    base: str
    names: tuple[str, ...]
    weights: tuple[float, ...]
    active: tuple[str, ...]
    verifiers: tuple[str, ...]
    p_is_q: bool

    @classmethod
    def of(cls, engine: EftEngine, params: SamplingParams, draft_with: str | None) -> ModelPlan:
        engine.check_weights(params)
        drafter = engine.model_of[pick_drafter(engine.deltas, params.weight, draft_with).chat]
        base = engine.model_of[BASE]
        weighted = [(name, w) for name, w in engine.coefficients(params).items() if w != 0.0]
        dexperts = base_nucleus_needed(params)
        needed = {name for name, _ in weighted} | {drafter} | ({base} if dexperts else set())
        active = tuple(name for name in engine.models if name in needed)
        return cls(
            drafter=drafter,
            base=base,
            names=tuple(name for name, _ in weighted),
            weights=tuple(w for _, w in weighted),
            active=active,
            verifiers=tuple(name for name in active if name != drafter),
            p_is_q=weighted == [(drafter, 1.0)] and not dexperts,
        )


@dataclass
class Draft:
    """What the drafter proposed this round: tokens x_1..x_m (m ≤ k: fewer when one ends the
    text), the q_i each was drawn from, and its own logits rows at positions 0..m−1 (the row
    at position m, where a bonus token would be drawn, is evaluated only if it is needed)."""

    tokens: list[int] = field(default_factory=list)
    qs: list[Dist] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)


class Token(NamedTuple):
    """One output position of a round: the token, and what the events report about it."""

    id: int
    delta: float | None = None  # log p_EFT − log p_base at T = 1 (config.trace)
    logprob: TokenLogprob | None = None  # config.logprobs


class Generation:
    """One generation over an EftEngine's models: the plan, the caches' bookkeeping, the output.

    Kept off EftEngine so the engine stays reusable. Everything it holds is created here;
    settings that cannot run (unknown delta weights, a bad drafter, a prompt that does not
    fit) raise UserError from the constructor, before any model is touched.

    The generation is a coroutine (``steps``) that yields the evaluations it needs and
    receives their logit rows, and pushes its events onto an outbox (``drain``): ``events``
    drives it one evaluation at a time on sequence 0 (the plain path), ``scheduler.Scheduler``
    drives many at once, batching every sequence's requests per model. Rows received are
    views that the model's next decode overwrites: a step that yields again keeps
    (``keep_row``) the rows it still needs. ``models`` maps each model name to what holds this
    generation's cache (``n_past``, ``n_ctx``, ``rollback``): the engine's models themselves,
    or one sequence of them. ``block_length``: where an adaptive generation takes each
    round's k (a scheduler's shared choice); default, its own ``controller``.
    """

    def __init__(
        self,
        engine: EftEngine,
        prompt: Mapping[str, list[int]],
        config: GenerationConfig,
        rng: np.random.Generator,
        cancel: Callable[[], bool] | None = None,
        models: Mapping | None = None,
        block_length: Callable[[], int] | None = None,
    ) -> None:
        self.engine = engine
        self.models = engine.models if models is None else models
        self.cfg = config
        self.params = config.sampling
        self.draft_params = replace(config.sampling, top_p_mode="eft")
        self.cancel = cancel or (lambda: False)
        self.t0 = time.perf_counter()
        self.stats = GenStats()
        self.stream = TextStream(config.stop)
        self.token_ids: list[int] = []
        self._out: list[Event] = []
        self._last_stats = self.t0
        self.plan = ModelPlan.of(engine, self.params, config.draft_with)
        self.targets = Targets(self.plan, self.params, engine.vocab, logprobs=config.logprobs, trace=config.trace)
        self.prompt = {name: list(prompt[name]) for name in self.plan.active}
        check_prompt(self.prompt, {name: engine.models[name] for name in self.plan.active})
        # no generation outgrows its context: that bounds the tokens (and the uniforms drawn for them)
        self.max_tokens = min(config.max_tokens, min(self.models[name].n_ctx for name in self.plan.active))
        self.u = uniforms(rng, self.max_tokens)
        self.stats.prompt_tokens = {name: len(t) for name, t in self.prompt.items()}
        self.controller = DraftController(
            draft_cost=self._size([self.plan.drafter]),
            verify_cost=self._size(self.plan.verifiers),
            direct_cost=None if self.plan.drafter in self.plan.names else self._size(self.plan.verifiers),
        )
        self._block_length = block_length or self.controller.next_k
        self.speculative = False  # drafting rounds at all (set when the rounds start): else each token is drawn from p
        # the caches: each model's not yet evaluated tokens, and the logits row the prompt left
        self.pending: dict[str, list[int]] = {name: [] for name in self.plan.active}
        self.held: dict[str, np.ndarray] = {}

    def _size(self, names: Sequence[str]) -> int:
        return sum(self.engine.models[n].size_bytes for n in names)

    @property
    def adaptive(self) -> bool:
        """The block length follows acceptance (``draft_tokens`` unset)."""
        return self.cfg.draft_tokens is None

    # -- drivers ----------------------------------------------------------------------------
    def events(self) -> Iterator[Event]:
        """Run on the models themselves (sequence 0), one evaluation after another."""
        gen = self.steps()
        resume: Callable[[], list[Eval]] = lambda: next(gen)  # noqa: E731
        while True:
            try:
                reqs = resume()
            except StopIteration:
                break
            yield from self.drain()
            try:
                rows = [self.models[r.name].eval(r.tokens, r.n_logits) for r in reqs]
            except (UserError, Cancelled) as exc:
                resume = lambda exc=exc: gen.throw(exc)  # noqa: E731
            else:
                resume = lambda rows=rows: gen.send(rows)  # noqa: E731
        yield from self.drain()

    def drain(self) -> list[Event]:
        """The events pushed since the last call."""
        out, self._out = self._out, []
        return out

    def steps(self, prefill_chunk: int | None = None, solo: bool = False) -> Steps:
        """The whole generation as a coroutine; ends after pushing one FinishedEvent.

        ``prefill_chunk``: None evaluates the prompt directly on the models (reusing what
        their caches hold); a number yields it in chunks of that many tokens per model,
        ``solo`` ones if asked.
        """
        reason, error = "length", None
        try:
            if prefill_chunk is None:
                self._prefill()
            else:
                yield from self._prefill_steps(prefill_chunk, solo)
            self.stats.prompt_seconds = time.perf_counter() - self.t0
            reason = yield from self._loop()
        except Cancelled:
            reason = "cancelled"
        except UserError as e:
            reason, error = "error", e
        self.finish(reason, error)

    def finish(self, reason: str, error: str | UserError | None = None) -> None:
        """Push the held-back text and the FinishedEvent."""
        tail = self.stream.flush()
        if tail:
            self._out.append(TokenEvent(-1, tail))
        self.stats.seconds = time.perf_counter() - self.t0
        cause = error if isinstance(error, UserError) else None
        text = None if error is None else str(error)
        self._out.append(FinishedEvent(reason, self.stream.text, list(self.token_ids), self.stats.snapshot(), text, cause))

    # -- the prompt -------------------------------------------------------------------------
    def _prefill(self) -> None:
        """Evaluate each model's prompt, reusing what its cache already holds; keep the last row."""
        for name in self.plan.active:
            self.held[name] = keep_row(self.models[name].prefill(self.prompt[name], self.cancel))

    def _prefill_steps(self, chunk: int, solo: bool) -> Steps:
        """The prompt from an empty cache in chunks (one request per model and chunk)."""
        for name in self.plan.active:
            self.models[name].rollback(0)
        longest = max(len(t) for t in self.prompt.values())
        for start in range(0, longest, chunk):
            if self.cancel():
                raise Cancelled
            reqs = [
                Eval(n, self.prompt[n][start : start + chunk], 1, solo=solo)
                for n in self.plan.active
                if start < len(self.prompt[n])
            ]
            got = yield reqs
            for r, rows in zip(reqs, got):
                if start + chunk >= len(self.prompt[r.name]):
                    self.held[r.name] = keep_row(rows[0])

    # -- rounds -----------------------------------------------------------------------------
    def _loop(self) -> Generator[list[Eval], list[np.ndarray], str]:
        self.speculative = speculative = self._speculative()
        while True:
            left = self.max_tokens - self.stats.n_tokens
            room = min(self.models[n].n_ctx - self.models[n].n_past - len(self.pending[n]) for n in self.plan.active)
            if left <= 0 or room < 0:  # before the cancel check: a complete answer is not "stopped"
                return "length"
            if self.cancel():
                return "cancelled"
            direct = self.adaptive and self.controller.direct()
            k = 0 if direct else max(0, min(self._next_k() if speculative else 0, left - 1, room))
            if direct or (k == 0 and self._greedy_without_drafter()):
                tokens = yield from self._direct_round()
            else:
                tokens = yield from self._round(k)
            if self._emit(tokens):
                return "stop"
            self._maybe_stats()

    def _round(self, k: int) -> Generator[list[Eval], list[np.ndarray], list[Token]]:
        """Draft up to k tokens, verify them in one batch per model, accept or resample each in
        turn (a bonus token when all stand), and commit what was accepted."""
        pos = len(self.token_ids)  # the round's first output position: its row of uniforms
        start = {name: self.models[name].n_past + len(self.pending[name]) for name in self.plan.active}
        draft = yield from self._draft(k, pos)
        rows = yield from self._verify(draft)
        tokens, all_stood = self._accept(rows, draft, pos)
        if all_stood:
            tokens.append((yield from self._bonus(rows, draft, pos + len(draft.tokens))))
        self._commit(start, [t.id for t in tokens])
        if k:
            self._account(k, len(draft.tokens), sum(t.id == x for t, x in zip(tokens, draft.tokens)))
        return tokens

    def _draft(self, k: int, pos: int) -> Generator[list[Eval], list[np.ndarray], Draft]:
        """The drafter drafts up to k tokens, each x_i drawn from its own q_i with the
        position's first uniform; an end token ends the draft."""
        drafter = self.plan.drafter
        draft = Draft()
        if k == 0 and self.pending[drafter]:
            return draft  # a naive round: the drafter's row comes with the verification batch
        if self.pending[drafter]:
            row = keep_row((yield [Eval(drafter, self.pending[drafter], 1, light=True)])[0][0])
        else:
            row = self.held.pop(drafter)
        draft.rows.append(row)
        for i in range(k):
            q = self.targets.drafted(row, self.draft_params)
            x = sample(q, self.u[pos + i, 0])
            draft.tokens.append(x)
            draft.qs.append(q)
            if i == k - 1 or self._is_eog(x):
                break
            row = keep_row((yield [Eval(drafter, [x], 1, light=True)])[0][0])
            draft.rows.append(row)
        return draft

    def _verify(self, draft: Draft) -> Generator[list[Eval], list[np.ndarray], Rows]:
        """Every other model evaluates its pending tokens and the drafts in one batch: each
        model's rows at positions 0..m of the round (m drafts; the drafter's own as drafted).
        In a naive round the drafter's pending tokens join the batch."""
        drafter = self.plan.drafter
        reqs = [Eval(drafter, self.pending[drafter], 1)] if not draft.rows else []
        for name in self.plan.verifiers:
            if self.pending[name]:
                reqs.append(Eval(name, self.pending[name] + draft.tokens, len(draft.tokens) + 1))
            elif draft.tokens:
                reqs.append(Eval(name, list(draft.tokens), len(draft.tokens)))
        got = dict(zip((r.name for r in reqs), (yield reqs))) if reqs else {}
        rows = {drafter: draft.rows or [got[drafter][0]]}
        for name in self.plan.verifiers:  # a model with nothing pending starts from the prompt's row
            held = [] if self.pending[name] else [self.held.pop(name)]
            rows[name] = held + list(got.get(name, ()))
        return rows

    def _accept(self, rows: Rows, draft: Draft, pos: int) -> tuple[list[Token], bool]:
        """Each draft in turn stands or is replaced (``_decide``), up to the first replaced
        one or an end token; the flag says every draft stood and none ended the text."""
        tokens: list[Token] = []
        for i, (x, q) in enumerate(zip(draft.tokens, draft.qs)):
            tokens.append(self._decide(rows, i, q, x, pos + i))
            if tokens[-1].id != x or self._is_eog(x):
                return tokens, False
        return tokens, True

    def _bonus(self, rows: Rows, draft: Draft, pos: int) -> Generator[list[Eval], list[np.ndarray], Token]:
        """Every draft stood: one more token at position m. In a speculative run it is drawn
        like a draft from the drafter's row after the last one, and decided like one (so a
        position's token does not depend on where a round ends); a naive run draws it from p."""
        i = len(draft.tokens)
        drafter = self.plan.drafter
        if not self.speculative:
            return self._draw({name: r[i] for name, r in rows.items()}, pos)
        if draft.tokens:  # the drafter has not evaluated its last draft yet
            for name in self.plan.verifiers:  # another sequence's step may reuse these views' buffer
                rows[name][i] = keep_row(rows[name][i])
            rows[drafter].append(keep_row((yield [Eval(drafter, [draft.tokens[-1]], 1, light=True)])[0][0]))
        q = self.targets.drafted(rows[drafter][i], self.draft_params)
        return self._decide(rows, i, q, sample(q, self.u[pos, 0]), pos)

    def _draw(self, here: Mapping[str, np.ndarray], pos: int) -> Token:
        """A token drawn from p itself, with the position's first uniform (no proposal)."""
        p, z = self.targets.target(here)
        return self._token(here, p.argmax if self.params.temperature == 0 else sample(p, self.u[pos, 0]), z)

    def _decide(self, rows: Rows, i: int, q: Dist, x: int, pos: int) -> Token:
        """Keep x (drawn from q) with prob min(1, p/q), else resample from norm(max(0, p − q)),
        with the position's second and third uniforms."""
        here = {name: r[i] for name, r in rows.items()}
        if self.plan.p_is_q:
            return self._token(here, x)
        p, z = self.targets.target(here)
        if self.params.temperature == 0:  # p is one token: x stands if it is that token, else p is the residual
            return self._token(here, p.argmax, z)
        if accept(p, q, x, self.u[pos, 1]):
            return self._token(here, x, z)
        return self._token(here, sample(residual(p, q), self.u[pos, 2]), z)

    def _token(self, here: Mapping[str, np.ndarray], token: int, z: np.ndarray | None = None) -> Token:
        """The token with its delta and log-probability (when asked for), from the combined row
        ``z`` of its position (combined here if the decision did not need it)."""
        if not self.targets.wants_z(here):
            return Token(token)
        z = self.targets.combined(here) if z is None else z
        return Token(token, self.targets.delta(z, here, token), self.targets.logprob(z, token))

    def _commit(self, start: Mapping[str, int], tokens: list[int]) -> None:
        """Every cache keeps the sequence up to the round's last token, which becomes pending."""
        for name in self.plan.active:
            self.models[name].rollback(start[name] + len(tokens) - 1)
            self.pending[name] = [tokens[-1]]

    def _direct_round(self) -> Generator[list[Eval], list[np.ndarray], list[Token]]:
        """One token from the mixture's own models, the drafter skipped (drafting does not pay).

        The drafter is not in the mixture, so p needs only the verifiers; the token is drawn
        from p directly. The drafter's cache falls behind: its pending tokens grow and are
        evaluated in one batch when drafting resumes.
        """
        pos = len(self.token_ids)
        reqs = [Eval(name, self.pending[name], 1) for name in self.plan.verifiers if self.pending[name]]
        got = dict(zip((r.name for r in reqs), (yield reqs))) if reqs else {}
        here = {name: got[name][0] if name in got else self.held.pop(name) for name in self.plan.verifiers}
        token = self._draw(here, pos)
        self.held.pop(self.plan.drafter, None)  # its prompt row is stale once a token passes it by
        self.pending[self.plan.drafter].append(token.id)
        for name in self.plan.verifiers:
            self.pending[name] = [token.id]
        self.stats.draft_tokens = 0
        return [token]

    def _greedy_without_drafter(self) -> bool:
        """Greedy with the drafter outside the mixture: a naive round's token is argmax p
        whatever the drafter says, so the drafter can sit the round out (same token, one
        decode less)."""
        return self.params.temperature == 0 and self.plan.drafter not in self.plan.names

    def _speculative(self) -> bool:
        fixed = self.cfg.draft_tokens
        if fixed and not self.engine.can_rollback:
            raise Fixable(
                "speculative decoding needs models whose cache can be trimmed (not recurrent/hybrid)", "set {draft_tokens} to 0"
            )
        return self.engine.can_rollback and fixed != 0

    def _next_k(self) -> int:
        return self._block_length() if self.adaptive else self.cfg.draft_tokens

    def _is_eog(self, token: int) -> bool:
        return self.engine.models[self.plan.drafter].is_eog(token)

    def _account(self, k: int, drafted: int, n_acc: int) -> None:
        self.stats.drafted += drafted
        self.stats.accepted += n_acc
        self.stats.rounds += 1
        self.stats.draft_tokens = k
        self.controller.update(drafted, n_acc)

    # -- output -----------------------------------------------------------------------------
    def _emit(self, tokens: list[Token]) -> bool:
        """Push the round's tokens as events; True when generation stops here."""
        chat = self.engine.chat
        for tok in tokens:
            if chat.is_eog(tok.id):
                return True
            self.token_ids.append(tok.id)
            self.stats.n_tokens += 1
            self._out.append(TokenEvent(tok.id, self.stream.feed(chat.piece(tok.id)), tok.delta, tok.logprob))
            if self.stream.stopped:
                return True
        return False

    def _maybe_stats(self) -> None:
        now = time.perf_counter()
        if now - self._last_stats >= self.cfg.stats_interval:
            self._last_stats = now
            self.stats.seconds = now - self.t0
            self._out.append(StatsEvent(self.stats.snapshot()))


def keep_row(row: np.ndarray) -> np.ndarray:
    """A logits row that must outlive its model's next decode (llama.cpp reuses the buffer):
    a copy. One function, so the profile (``scripts/bench.py --profile``) can time the copies."""
    return row.copy()


def uniforms(rng: np.random.Generator, max_tokens: int) -> np.ndarray:
    """Three uniforms per output position: draft draw, acceptance test, resample draw.

    Positions never reach ``max_tokens`` (bounded by the context, see ``Generation``). Row i
    is the same whatever ``max_tokens`` is, so a seed gives the same numbers for every
    position that exists; the few spare rows keep the draws as they always were.
    """
    return rng.random((max_tokens + K_MAX + 2, 3))

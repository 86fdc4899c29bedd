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

import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from eft_local.engine.config import GenerationConfig
from eft_local.engine.draft_control import K_MAX, DraftController
from eft_local.engine.events import Event, FinishedEvent, GenStats, StatsEvent, TokenEvent
from eft_local.engine.prompt_check import check_prompt
from eft_local.engine.targets import Targets
from eft_local.engine.textstream import TextStream
from eft_local.errors import Cancelled, EngineBusy, UserError
from eft_local.llama.adapter import LlamaModel
from eft_local.llama.prompts import role_prompts
from eft_local.llama.vocab import SharedVocab, check_vocab
from eft_local.mix.logprobs import TokenLogprob
from eft_local.mix.mixture import BASE, Delta, check_known_deltas, check_roles, coefficients, deltas_of, pick_drafter, role_order
from eft_local.mix.params import SamplingParams
from eft_local.mix.sampling import (
    Dist,
    accept,
    base_nucleus_needed,
    residual,
    sample,
)


class EftEngine:
    """The models of an EFT mixture behind one generate() that yields events.

    ``roles`` maps role names (see ``mixture``) to models; roles that share a file share one
    model, so ``models`` — the distinct contexts, each named after its first role — is what
    gets evaluated: a shared reference once per position, not once per role.
    """

    def __init__(self, roles: Mapping[str, LlamaModel]) -> None:
        check_roles(roles)
        order = role_order(roles)
        self.roles = {r: roles[r] for r in order}
        self.models: dict[str, LlamaModel] = {}
        self.model_of: dict[str, str] = {}
        for role, model in self.roles.items():
            name = next((n for n, m in self.models.items() if m is model), role)
            self.models.setdefault(name, model)
            self.model_of[role] = name
        self.deltas: list[Delta] = deltas_of(order)
        self.vocab: SharedVocab = check_vocab(self.models)
        self.can_rollback = all(m.supports_rollback for m in self.models.values())
        self._z = np.empty(self.vocab.n, np.float32)
        self._running = threading.Lock()

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
        n_seq: int = 1,
    ) -> EftEngine:
        """Load every role's model, one context per distinct (file, prompt kind, RPC servers).

        Fine-tuned models see their chat template and the others plain/templated text, so a
        file in both kinds of role needs two contexts (the weights are memory-mapped, so
        shared in RAM); the same file in two roles of one kind is loaded once. ``rpc``:
        role -> llama.cpp RPC servers that hold its layers. ``n_seq`` > 1: every context
        holds that many sequences of ``n_ctx`` each (``scheduler.Scheduler``).
        """
        check_roles(paths)
        rpc = rpc or {}
        chats = {d.chat for d in deltas_of(paths)}
        loaded: dict[tuple, LlamaModel] = {}
        roles: dict[str, LlamaModel] = {}
        try:
            for role in sorted(role_order(paths), key=lambda r: not rpc.get(r)):  # remote first: fail fast
                path = Path(paths[role]).expanduser()
                servers = tuple(rpc.get(role, ()))
                key = (path.resolve(), role in chats, servers)
                if key not in loaded:
                    cb = (lambda f, r=role: on_progress(r, f)) if on_progress else None
                    loaded[key] = LlamaModel(
                        path,
                        n_ctx=n_ctx,
                        n_gpu_layers=n_gpu_layers,
                        n_threads=n_threads,
                        progress=cb,
                        rpc_servers=servers,
                        n_seq=n_seq,
                    )
                roles[role] = loaded[key]
            return cls(roles)
        except BaseException:
            for m in loaded.values():
                m.close()
            raise

    def reset(self) -> None:
        """Empty every KV cache, every sequence (after a failed decode left one in an unknown state)."""
        for m in self.models.values():
            m.clear()

    def close(self) -> None:
        for m in self.models.values():
            m.close()

    @property
    def chat(self) -> LlamaModel:
        """The first delta's fine-tuned model: its template, EOG tokens and pieces are used."""
        return self.roles[self.deltas[0].chat]

    @property
    def chat_name(self) -> str:
        """Name of the main chat model's context (its prompt ids are the ones reported)."""
        return self.model_of[self.deltas[0].chat]

    @property
    def delta_names(self) -> list[str]:
        return [d.name for d in self.deltas]

    def coefficients(self, params: SamplingParams) -> dict[str, float]:
        """Each distinct model's weight in the expanded EFT formula for ``params``."""
        return coefficients(self.deltas, params.weight, params.beta, self.model_of)

    def check_weights(self, params: SamplingParams, where: Callable[[str], str] = "weights.{}".format) -> None:
        check_known_deltas(params.weights, self.delta_names, where)

    def prompt(
        self, *, messages=None, raw: str | None = None, style: str = "template", plain_content: bool = False
    ) -> dict[str, list[int]]:
        chats = [self.model_of[d.chat] for d in self.deltas]
        return role_prompts(self.models, messages=messages, raw=raw, style=style, chat_roles=chats, plain_content=plain_content)

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
        raise UserError(
            f"the last message alone does not fit in n_ctx {self.chat.n_ctx} with {reserve} tokens to answer; raise --n-ctx"
        )

    def context_used(self) -> dict[str, tuple[int, int]]:
        return {r: (m.n_past, m.n_ctx) for r, m in self.models.items()}

    def generate(
        self,
        prompt: Mapping[str, list[int]],
        config: GenerationConfig,
        rng: np.random.Generator,
        cancel: Callable[[], bool] | None = None,
    ) -> Iterator[Event]:
        """Yield TokenEvents, periodic StatsEvents and one FinishedEvent.

        One generation at a time: the three contexts and the scratch buffers are shared, so
        a second concurrent call fails with EngineBusy instead of corrupting the first."""
        if not self._running.acquire(blocking=False):
            raise EngineBusy("the engine is already generating (one generation at a time)")
        try:
            try:
                run = Generation(self, prompt, config, rng, cancel)
            except UserError as e:
                yield FinishedEvent("error", "", [], GenStats(), str(e))
                return
            yield from run.events()
        finally:
            self._running.release()


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


class Generation:
    """One generation over an EftEngine's models: the plan, the caches' bookkeeping, the output.

    Kept off EftEngine so the engine stays reusable. Everything it holds is created here;
    settings that cannot run (unknown delta weights, a bad drafter, a prompt that does not
    fit) raise UserError from the constructor, before any model is touched.

    ``plan`` (a ``ModelPlan``) says which models run. The generation is a coroutine (``steps``) that yields the evaluations it needs and
    receives their logit rows, and pushes its events onto an outbox (``drain``): ``events``
    drives it one evaluation at a time on sequence 0 (the plain path), ``scheduler.Scheduler``
    drives many at once, batching every sequence's requests per model. ``models`` maps each
    model name to what holds this generation's cache (``n_past``, ``n_ctx``, ``rollback``):
    the engine's models themselves, or one sequence of them. ``block_length``: where an
    adaptive generation takes each round's k (a scheduler's shared choice); default, its
    own ``controller``.
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
        self.u = uniforms(rng, config.max_tokens)
        self.cancel = cancel or (lambda: False)
        self.t0 = time.perf_counter()
        self.stats = GenStats()
        self.stream = TextStream(config.stop)
        self.token_ids: list[int] = []
        self._out: list[Event] = []
        self._last_stats = self.t0
        self._round_logprobs: list[TokenLogprob] = []  # this round's, in token order (config.logprobs only)
        self.plan = ModelPlan.of(engine, self.params, config.draft_with)
        self.targets = Targets(self.plan, self.params, engine.vocab, engine._z, logprobs=config.logprobs, trace=config.trace)
        self.prompt = {name: list(prompt[name]) for name in self.plan.active}
        check_prompt(self.prompt, {name: engine.models[name] for name in self.plan.active})
        self.stats.prompt_tokens = {name: len(t) for name, t in self.prompt.items()}
        self.controller = DraftController(
            draft_cost=self._size([self.plan.drafter]),
            verify_cost=self._size(self.plan.verifiers),
            direct_cost=None if self.plan.drafter in self.plan.names else self._size(self.plan.verifiers),
        )
        self._block_length = block_length or self.controller.next_k
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
            reason, error = "error", str(e)
        self.finish(reason, error)

    def finish(self, reason: str, error: str | None = None) -> None:
        """Push the held-back text and the FinishedEvent."""
        tail = self.stream.flush()
        if tail:
            self._out.append(TokenEvent(-1, tail))
        self.stats.seconds = time.perf_counter() - self.t0
        self._out.append(FinishedEvent(reason, self.stream.text, list(self.token_ids), self.stats.snapshot(), error))

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
        speculative = self._speculative()
        while True:
            left = self.cfg.max_tokens - self.stats.n_tokens
            room = min(self.models[n].n_ctx - self.models[n].n_past - len(self.pending[n]) for n in self.plan.active)
            if left <= 0 or room < 0:  # before the cancel check: a complete answer is not "stopped"
                return "length"
            if self.cancel():
                return "cancelled"
            direct = self.adaptive and self.controller.direct()
            k = 0 if direct else max(0, min(self._next_k() if speculative else 0, left - 1, room))
            if direct or (k == 0 and self._greedy_without_drafter()):
                accepted, deltas = yield from self._direct_round()
            else:
                accepted, deltas = yield from self._round(k)
            if self._emit(accepted, deltas):
                return "stop"
            self._maybe_stats()

    def _greedy_without_drafter(self) -> bool:
        """Greedy with the drafter outside the mixture: a naive round's token is argmax p
        whatever the drafter says, so the drafter can sit the round out (same token, one
        decode less)."""
        return self.params.temperature == 0 and self.plan.drafter not in self.plan.names

    def _speculative(self) -> bool:
        fixed = self.cfg.draft_tokens
        if fixed and not self.engine.can_rollback:
            raise UserError(
                "speculative decoding needs models whose cache can be trimmed (not recurrent/hybrid); use --draft-tokens 0"
            )
        return self.engine.can_rollback and fixed != 0

    def _next_k(self) -> int:
        return self._block_length() if self.adaptive else self.cfg.draft_tokens

    def _maybe_stats(self) -> None:
        now = time.perf_counter()
        if now - self._last_stats >= self.cfg.stats_interval:
            self._last_stats = now
            self.stats.seconds = now - self.t0
            self._out.append(StatsEvent(self.stats.snapshot()))

    def _round(self, k: int) -> Generator[list[Eval], list[np.ndarray], tuple[list[int], list[float | None]]]:
        """Draft up to k tokens, verify them in one batch per model, keep the accepted prefix."""
        n0 = {name: self.models[name].n_past for name in self.plan.active}
        pos = len(self.token_ids)  # index into the per-position uniforms
        rows, drafts, qs = yield from self._draft_and_verify(k, pos)
        accepted, deltas, all_passed = self._accept_drafts(rows, drafts, qs, pos)
        if all_passed:
            tok, delta = yield from self._bonus(rows, drafts, pos)
            accepted.append(tok)
            deltas.append(delta)
        if k:
            self._account(k, len(drafts), sum(a == d for a, d in zip(accepted, drafts)))
        for name in self.plan.active:
            self.models[name].rollback(n0[name] + len(self.pending[name]) + len(accepted) - 1)
            self.pending[name] = [accepted[-1]]
        return accepted, deltas

    def _direct_round(self) -> Generator[list[Eval], list[np.ndarray], tuple[list[int], list[float | None]]]:
        """One token from the mixture's own models, the drafter skipped (drafting does not pay).

        The drafter is not in the mixture, so p needs only the verifiers; the token is drawn
        from p directly. The drafter's cache falls behind: its pending tokens grow and are
        evaluated in one batch when drafting resumes.
        """
        pos = len(self.token_ids)
        reqs = [Eval(name, self.pending[name], 1) for name in self.plan.verifiers if self.pending[name]]
        got = dict(zip((r.name for r in reqs), (yield reqs))) if reqs else {}
        rows = {name: [got[name][0] if name in got else self.held.pop(name)] for name in self.plan.verifiers}
        tok = sample(self.targets.target(rows, 0), self.u[pos, 0])
        delta = self.targets.delta(rows, 0, tok)
        self._note_logprob(rows, 0, tok)
        self.held.pop(self.plan.drafter, None)  # its prompt row is stale once a token passes it by
        self.pending[self.plan.drafter].append(tok)
        for name in self.plan.verifiers:
            self.pending[name] = [tok]
        self.stats.draft_tokens = 0
        return [tok], [delta]

    def _draft_and_verify(
        self, k: int, pos: int
    ) -> Generator[list[Eval], list[np.ndarray], tuple[dict[str, list[np.ndarray]], list[int], list[Dist]]]:
        """The drafter's rows, drafts and q_i, and every verifier's rows for this round."""
        extra: list[Eval] = []
        if k == 0 and self.pending[self.plan.drafter]:  # naive round: the drafter's row joins the verify batch
            chat_rows, drafts, qs = [], [], []
            extra = [Eval(self.plan.drafter, self.pending[self.plan.drafter], 1)]
        else:
            chat_rows, drafts, qs = yield from self._draft(k, pos)
        reqs = extra + [r for r in (self._verify_eval(name, drafts) for name in self.plan.verifiers) if r is not None]
        got = dict(zip((r.name for r in reqs), (yield reqs))) if reqs else {}
        if extra:
            chat_rows = [got.pop(self.plan.drafter)[0]]  # a view: used before this generation yields again
        rows = {name: self._rows(name, drafts, got.get(name)) for name in self.plan.verifiers}
        rows[self.plan.drafter] = chat_rows
        return rows, drafts, qs

    def _accept_drafts(
        self, rows: dict[str, list[np.ndarray]], drafts: list[int], qs: list[Dist], pos: int
    ) -> tuple[list[int], list[float | None], bool]:
        """Each draft in turn until the first rejection (its resampled token ends the list)
        or an end token; the flag says every draft passed and none ended the text (a bonus
        token follows)."""
        accepted: list[int] = []
        deltas: list[float | None] = []
        for i, x in enumerate(drafts):
            tok = self._verify(rows, i, qs[i], x, pos + i)
            accepted.append(tok)
            deltas.append(self.targets.delta(rows, i, tok))
            self._note_logprob(rows, i, tok)
            if tok != x or self._is_eog(x):
                return accepted, deltas, False
        return accepted, deltas, True

    def _bonus(
        self, rows: dict[str, list[np.ndarray]], drafts: list[int], pos: int
    ) -> Generator[list[Eval], list[np.ndarray], tuple[int, float | None]]:
        """Every draft passed: one more token from the drafter's row after the last draft."""
        i = len(drafts)
        chat_rows = rows[self.plan.drafter]
        if drafts:
            for name in self.plan.verifiers:  # another sequence's step may reuse these views' buffer
                rows[name][i] = keep_row(rows[name][i])
            chat_rows.append(keep_row((yield [Eval(self.plan.drafter, [drafts[-1]], 1, light=True)])[0][0]))
        if self.params.temperature == 0 and not self.plan.p_is_q:
            # greedy: whatever q drafts, accept-or-resample ends at argmax p, so q is not built
            tok = self.targets.target(rows, i).argmax
        else:
            q = self.targets.drafted(chat_rows[i], self.draft_params)
            tok = self._verify(rows, i, q, sample(q, self.u[pos + i, 0]), pos + i)
        self._note_logprob(rows, i, tok)
        return tok, self.targets.delta(rows, i, tok)

    def _is_eog(self, token: int) -> bool:
        return self.engine.models[self.plan.drafter].is_eog(token)

    def _verify_eval(self, name: str, drafts: list[int]) -> Eval | None:
        """What a verifier evaluates this round: pending + drafts (None: its held row is all)."""
        pending = self.pending[name]
        if pending:
            return Eval(name, pending + drafts, len(drafts) + 1)
        return Eval(name, list(drafts), len(drafts)) if drafts else None

    def _rows(self, name: str, drafts: list[int], got: np.ndarray | None) -> list[np.ndarray]:
        """Logit rows for positions 1..len(drafts)+1 of this round (views where possible)."""
        if self.pending[name]:
            return list(got)
        return [self.held.pop(name)] + (list(got) if drafts else [])

    def _verify(self, rows: dict[str, list[np.ndarray]], i: int, q: Dist, x: int, pos: int) -> int:
        """Keep x (drawn from q) with prob min(1, p/q), else resample from norm(max(0, p − q)).

        Every position — drafted or not, naive or speculative — is drawn this way from its
        own three uniforms, so a seeded run emits the same tokens whatever the block length.
        """
        if self.plan.p_is_q:
            return x
        p = self.targets.target(rows, i)
        if accept(p, q, x, self.u[pos, 1]):
            return x
        return sample(residual(p, q), self.u[pos, 2])

    def _draft(self, k: int, pos: int) -> Generator[list[Eval], list[np.ndarray], tuple[list[np.ndarray], list[int], list[Dist]]]:
        """The drafter drafts up to k tokens; returns its logit rows, drafts, and each q_i."""
        pending = self.pending[self.plan.drafter]
        if pending:
            rows = [keep_row((yield [Eval(self.plan.drafter, pending, 1, light=True)])[0][0])]
        else:
            rows = [self.held.pop(self.plan.drafter)]
        drafts: list[int] = []
        qs: list[Dist] = []
        for i in range(k):
            q = self.targets.drafted(rows[i], self.draft_params)
            x = sample(q, self.u[pos + i, 0])
            drafts.append(x)
            qs.append(q)
            if i == k - 1 or self._is_eog(x):
                break
            rows.append(keep_row((yield [Eval(self.plan.drafter, [x], 1, light=True)])[0][0]))
        return rows, drafts, qs

    def _note_logprob(self, rows: dict[str, list[np.ndarray]], i: int, token: int) -> None:
        if self.cfg.logprobs is not None:
            self._round_logprobs.append(self.targets.logprob(rows, i, token))

    def _account(self, k: int, drafted: int, n_acc: int) -> None:
        self.stats.drafted += drafted
        self.stats.accepted += n_acc
        self.stats.rounds += 1
        self.stats.draft_tokens = k
        self.controller.update(drafted, n_acc)

    def _emit(self, tokens: list[int], deltas: list[float | None]) -> bool:
        """Push the round's tokens as events; True when generation stops here."""
        chat = self.engine.chat
        logprobs, self._round_logprobs = self._round_logprobs or [None] * len(tokens), []
        for tok, delta, logprob in zip(tokens, deltas, logprobs):
            if chat.is_eog(tok):
                return True
            self.token_ids.append(tok)
            self.stats.n_tokens += 1
            self._out.append(TokenEvent(tok, self.stream.feed(chat.piece(tok)), delta, logprob))
            if self.stream.stopped:
                return True
        return False


def keep_row(row: np.ndarray) -> np.ndarray:
    """A logits row that must outlive its model's next decode (llama.cpp reuses the buffer):
    a copy. One function, so the profile (``scripts/bench.py --profile``) can time the copies."""
    return row.copy()


def uniforms(rng: np.random.Generator, max_tokens: int) -> np.ndarray:
    """Three uniforms per output position: draft draw, acceptance test, resample draw.

    Positions never exceed ``max_tokens``; the table's size (a few spare rows) also fixes how
    much of ``rng`` one generation consumes, so it stays as it was for seeded reruns.
    """
    return rng.random((max_tokens + K_MAX + 2, 3))

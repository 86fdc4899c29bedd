"""Completions of echo (scoring) and of several prompts in one request.

Runs on the engine thread (``worker.EngineWorker``) with the session lock held: for each
prompt, in order, the echoed prompt's log-probabilities (``engine.scoring``), then the
generation (if ``max_tokens`` > 0) from the same cache. Prompt *i* draws from
``rng_for(seed, i)``, as ``eft-local run``'s *i*-th prompt does. Every prompt is tokenized
first, so a request whose answer would be too large (``request.check_logprobs_size``) or whose
prompt can't fit is refused before any work. Each prompt's ``Answer`` goes back as soon as it
is done (the reply turns it into compact JSON at once, so one prompt's objects are alive at a
time), then ``AllAnswered``; a prompt that fails ends the request with an ``ApiError`` naming
it. Under ``--parallel`` the prompts of a request without echo share the batch instead: each is
a sequence of its own and ``Gather`` passes their answers on as they finish.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from eft_local.engine.events import FinishedEvent, TokenEvent
from eft_local.engine.scoring import score_tokens
from eft_local.engine.session import PromptTooLong, Session, rng_for
from eft_local.errors import Cancelled, UserError
from eft_local.mix.logprobs import TokenLogprob
from eft_local.server.request import ApiError, GenRequest, check_logprobs_size, logprob_positions
from eft_local.settings import advice, field_name


@dataclass
class Answer:
    """One prompt's result: what the reply turns into one choice."""

    index: int
    prompt_ids: list[int] | None = None  # the chat model's prompt ids (echo)
    echo: list[TokenLogprob | None] | None = None  # per prompt token (first: None); None without echo
    tokens: list[TokenEvent] = field(default_factory=list)  # generated (with logprobs when asked)
    fin: FinishedEvent | None = None  # None: nothing generated (max_tokens 0)

    prompt_count: int = 0  # the chat model's prompt tokens, when the ids are not kept

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids) if self.prompt_ids is not None else self.prompt_count


@dataclass(frozen=True)
class AllAnswered:
    """After the last ``Answer`` of a request: nothing more comes."""


class Gather:
    """The prompts of one request generating as separate sequences of the batch: each gets a
    channel (``part(i)``) the engine thread puts its items on; the request starts when its first
    prompt does, each finished prompt's ``Answer`` goes on to the request's own channel, then
    ``AllAnswered`` (the first failure ends it instead, and ``cancel`` stops the other prompts)."""

    def __init__(self, channel, n: int, started: type, cancel: Callable[[], None]) -> None:
        self.channel, self.started, self.cancel = channel, started, cancel
        self.answers: list[Answer | None] = [Answer(i) for i in range(n)]
        self.left, self.closed, self.started_any = n, False, False

    def part(self, index: int) -> _Part:
        return _Part(self, index)

    def _put(self, index: int, item, last: bool) -> None:  # engine thread
        if self.closed:
            return
        answer = self.answers[index]
        if answer is None:
            return
        if isinstance(item, self.started):
            answer.prompt_count = item.prompt_tokens
            if not self.started_any:  # the request starts with its first prompt
                self.started_any = True
                self.channel.put(self.started(0))
        elif isinstance(item, TokenEvent):
            answer.tokens.append(item)
        elif isinstance(item, FinishedEvent) and item.reason in ("stop", "length"):
            answer.fin = item
            self.answers[index] = None  # (the reply holds it now)
            self.channel.put(answer)
            self.left -= 1
            if self.left == 0:
                self.closed = True
                self.channel.put(AllAnswered(), last=True)
        elif last:  # a failure (error, cancelled, Failed): the request ends with it
            self.closed = True
            self.cancel()
            self.channel.put(item, last=True)


@dataclass
class _Part:
    gather: Gather
    index: int

    def put(self, item, last: bool = False) -> None:
        self.gather._put(self.index, item, last)


def answer_prompts(session: Session, req: GenRequest, cancel: Callable[[], bool], emit: Callable[[Answer], None]) -> None:
    """Every prompt of ``req`` in order (the session lock held), each ``Answer`` to ``emit`` as it
    is done, or one ``ApiError`` (before any work, when the prompts can't fit or the answer would
    be too large). Raises ``Cancelled`` when ``cancel`` says the client went away."""
    engine, prompts, at = session.engine, [], 0  # at: the prompt being tokenized or answered
    try:
        for prompt in req.prompts or ():
            prompts.append(session.prompt(raw=prompt) if isinstance(prompt, str) else {n: list(prompt) for n in engine.models})
            at += 1
        lengths = [len(p[engine.chat_name]) for p in prompts]
        generated = req.config.max_tokens if req.generate else 0
        check_logprobs_size(logprob_positions(lengths, req.echo, generated, engine.n_ctx), req.logprobs)
        for at in range(len(prompts)):
            if cancel():
                raise Cancelled
            ids, prompts[at] = prompts[at], None
            emit(_answer(session, req, at, ids, cancel))
    except PromptTooLong as e:
        raise ApiError(400, f"prompt[{at}]: {advice(e, field_name)}", param="prompt", code="context_length_exceeded") from None
    except UserError as e:
        raise ApiError(400, f"prompt[{at}]: {advice(e, field_name)}", param="prompt", code="invalid_prompt") from None
    except (Cancelled, ApiError):
        raise
    except Exception as e:  # noqa: BLE001 - llama.cpp refused a batch: this request fails, the server goes on
        engine.reset()
        raise ApiError(500, f"scoring failed: {type(e).__name__}: {e}", type="server_error") from None


def _answer(session: Session, req: GenRequest, index: int, ids: dict[str, list[int]], cancel: Callable[[], bool]) -> Answer:
    engine = session.engine
    chat_ids = ids[engine.chat_name]
    answer = Answer(index, prompt_ids=chat_ids)
    if req.echo:
        ids = {name: chat_ids for name in engine.models}  # one sequence, scored as the chat model reads it
        n = len(chat_ids) - 1
        scored = req.logprobs is not None and n  # (the echoed text alone needs no scoring)
        answer.echo = [None, *(score_tokens(engine, ids, n, req.config.sampling, req.logprobs, cancel) if scored else [])]
    if req.generate:
        for ev in session.generate(ids, req.config, rng_for(req.seed, index), cancel=cancel):
            if isinstance(ev, TokenEvent):
                answer.tokens.append(ev)
            elif isinstance(ev, FinishedEvent):
                if ev.reason == "error":
                    raise UserError(ev.error or "generation failed")
                if ev.reason == "cancelled":
                    raise Cancelled
                answer.fin = ev
    return answer

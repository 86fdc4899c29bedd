"""Completions of echo (scoring) and of several prompts in one request.

Runs on the engine thread (``worker.EngineWorker``) with the session lock held: for each
prompt, in order, the echoed prompt's log-probabilities (``engine.scoring``), then the
generation (if ``max_tokens`` > 0) from the same cache. Prompt *i* draws from
``rng_for(seed, i)``, as ``eft-local run``'s *i*-th prompt does. Each prompt's result goes
back in one list of ``Answer``; a prompt that fails ends the request with an ``ApiError``
naming it. Under ``--parallel`` the prompts of a request without echo share the batch instead:
each is a sequence of its own and ``Gather`` puts their results back together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from eft_local.engine.events import FinishedEvent, TokenEvent
from eft_local.engine.scoring import score_tokens
from eft_local.engine.session import PromptTooLong, Session, rng_for
from eft_local.errors import Cancelled, UserError
from eft_local.mix.logprobs import TokenLogprob
from eft_local.server.request import ApiError, GenRequest, Prompt


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


class Gather:
    """The prompts of one request generating as separate sequences of the batch: each gets a
    channel (``part(i)``) the engine thread puts its items on; once every one has finished, the
    request's own channel gets the list of answers (the first failure ends it instead, and
    ``cancel`` stops the other prompts)."""

    def __init__(self, channel, n: int, started: type, cancel: Callable[[], None]) -> None:
        self.channel, self.started, self.cancel = channel, started, cancel
        self.answers = [Answer(i) for i in range(n)]
        self.left, self.closed = n, False

    def part(self, index: int) -> _Part:
        return _Part(self, index)

    def _put(self, index: int, item, last: bool) -> None:  # engine thread
        if self.closed:
            return
        answer = self.answers[index]
        if isinstance(item, self.started):
            answer.prompt_count = item.prompt_tokens
        elif isinstance(item, TokenEvent):
            answer.tokens.append(item)
        elif isinstance(item, FinishedEvent) and item.reason in ("stop", "length"):
            answer.fin = item
            self.left -= 1
            if self.left == 0:
                self.closed = True
                self.channel.put(self.answers, last=True)
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


def answer_prompts(session: Session, req: GenRequest, cancel: Callable[[], bool]) -> list[Answer]:
    """Every prompt of ``req`` in order (the session lock held), or one ``ApiError``.

    Raises ``Cancelled`` when ``cancel`` says the client went away."""
    answers: list[Answer] = []
    try:
        for i, prompt in enumerate(req.prompts or ()):
            if cancel():
                raise Cancelled
            answers.append(_answer(session, req, i, prompt, cancel))
    except PromptTooLong as e:
        raise ApiError(400, f"prompt[{len(answers)}]: {e}", param="prompt", code="context_length_exceeded") from None
    except UserError as e:
        raise ApiError(400, f"prompt[{len(answers)}]: {e}", param="prompt", code="invalid_prompt") from None
    except (Cancelled, ApiError):
        raise
    except Exception as e:  # noqa: BLE001 - llama.cpp refused a batch: this request fails, the server goes on
        session.engine.reset()
        raise ApiError(500, f"scoring failed: {type(e).__name__}: {e}", type="server_error") from None
    return answers


def _answer(session: Session, req: GenRequest, index: int, prompt: Prompt, cancel: Callable[[], bool]) -> Answer:
    engine = session.engine
    if isinstance(prompt, str):
        ids = session.prompt(raw=prompt)
    else:
        ids = {name: list(prompt) for name in engine.models}
    chat_ids = ids[engine.chat_name]
    answer = Answer(index, prompt_ids=chat_ids)
    if req.echo:
        ids = {name: chat_ids for name in engine.models}  # one sequence, scored as the chat model reads it
        n = len(chat_ids) - 1
        answer.echo = [None, *(score_tokens(engine, ids, n, req.config.sampling, req.logprobs or 0, cancel) if n else [])]
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

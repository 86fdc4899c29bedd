"""One engine thread, a bounded queue in front of it, and a channel back to the event loop.

llama.cpp contexts are not thread-safe, so every call that decodes runs on the one
``EngineWorker`` thread. Chat templates render before that, on a thread of their own (a
template is untrusted code, bounded in time: it must not hold up the engine); tokenizing
there only reads the vocabulary, as llama.cpp's own server does from its HTTP threads.
Requests wait in a bounded queue (``QueueFull`` when it is full). Each job has a cancel flag
the decoder checks before every speculative round: a client that goes away frees the engine
within one round, and a job cancelled while still queued never starts.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from eft_local.engine.events import FinishedEvent, TokenEvent
from eft_local.engine.scheduler import Scheduler, Ticket
from eft_local.engine.session import PromptTooLong, Session, rng_for, with_system
from eft_local.errors import Cancelled, UserError
from eft_local.llama.prompts import prerender
from eft_local.server import redact
from eft_local.server.answers import AllAnswered, Gather, answer_prompts
from eft_local.server.request import ApiError, GenRequest
from eft_local.settings import advice, field_name


class QueueFull(Exception):
    pass


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down; retry later", type="server_error", code="server_shutting_down")


@dataclass
class Started:
    """The prompt fitted and generation began (``prompt_tokens``: the chat model's count)."""

    prompt_tokens: int


@dataclass
class Failed:
    error: ApiError


class Channel:
    """Items from the engine thread to one coroutine.

    The engine thread only wakes the event loop when the coroutine is actually waiting (or
    pausing, for the last item), so tokens produced while the loop is busy or pacing its
    writes cost an append each, not a cross-thread wake-up each.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[Any] = deque()
        self._ready = asyncio.Event()
        self._waiting = False  # the coroutine waits in get(): wake it on the next item
        self._pausing = False  # the coroutine pauses: wake it only for the last item
        self._last = False  # the final item (FinishedEvent / Failed) is in

    def put(self, item: Any, last: bool = False) -> None:  # engine thread
        self.items.append(item)  # append first, then look at the flags (get() does the reverse)
        self._last = self._last or last
        if self._waiting or (last and self._pausing):
            self._waiting = self._pausing = False
            try:
                self.loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    async def get(self, timeout: float | None = None) -> list[Any]:
        """Everything that arrived (waits for at least one item; [] after ``timeout``)."""
        while not self.items:
            self._ready.clear()
            self._waiting = True
            if self.items:  # arrived between the check and the flag: no wake-up was sent
                self._waiting = False
                break
            if timeout is None:
                await self._ready.wait()
                continue
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except asyncio.TimeoutError:
                self._waiting = False
                return []
        out = list(self.items)
        for _ in out:
            self.items.popleft()
        return out

    async def pause(self, seconds: float) -> None:
        """Let items gather for ``seconds``, but return as soon as the last one is in."""
        if self._last:
            return
        self._ready.clear()
        self._pausing = True
        if self._last:  # came in between
            self._pausing = False
            return
        timer = self.loop.call_later(seconds, self._ready.set)
        try:
            await self._ready.wait()
        finally:
            timer.cancel()
            self._pausing = False

    def unget(self, items: list[Any]) -> None:
        """Put back items that ``get`` returned but the caller did not use (they come out first)."""
        self.items.extendleft(reversed(items))


@dataclass
class Job:
    request: GenRequest
    channel: Channel
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: bool = True  # forward TokenEvents (a non-streamed answer only needs the FinishedEvent)

    def cancel(self) -> None:
        self.cancelled.set()


class EngineWorker:
    """``parallel`` > 1: requests share speculative rounds through ``scheduler.Scheduler``
    (continuous batching; the engine must hold that many sequences per context)."""

    def __init__(self, session: Session, max_queue: int = 16, parallel: int = 1) -> None:
        self.session = session
        redact.protect(m.path for m in session.engine.models.values())  # error text never shows where they live
        self.max_queue = max_queue
        self.scheduler = Scheduler(session.engine, parallel) if parallel > 1 else None
        self._live: dict[Ticket, Job] = {}
        self._unstarted: dict[Ticket, int] = {}  # in the scheduler, not yet in a sequence -> its prompt's tokens
        self._jobs: deque[Job] = deque()
        self._preparing: deque[Job] = deque()  # chat requests whose templates render first (``_prepare_main``)
        self._rendering: Job | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self.running: Job | None = None
        self.completed = 0
        main = self._main if self.scheduler is None else self._main_batched
        self._thread = threading.Thread(target=main, name="eft-engine", daemon=True)
        self._prep_thread = threading.Thread(target=self._prepare_main, name="eft-templates", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._prep_thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """End every request (each waiting or running one answers 503 "shutting down": a stream
        gets a final error event), then wait for the engine thread so the models can be freed."""
        with self._cond:
            self._stopping = True
            queued = [*self._preparing, *([self._rendering] if self._rendering else []), *self._jobs]
            self._jobs.clear()
            self._preparing.clear()
            if self.running is not None:
                self.running.cancel()
            self._cond.notify_all()
        for job in queued:
            job.cancel()
            job.channel.put(Failed(shutting_down()), last=True)
        for thread in (self._thread, self._prep_thread):  # (a render ends within its time bound)
            if thread.is_alive():
                thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def waiting(self) -> int:
        """Requests not generating yet (in batched mode the scheduler queues those beyond its slots)."""
        queued_in_scheduler = max(0, len(self._live) - self.scheduler.n_seq) if self.scheduler else 0
        return len(self._jobs) + len(self._preparing) + (self._rendering is not None) + queued_in_scheduler

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            generating = len(self._live) or (self.running is not None)  # (live: in the scheduler, generating or not)
            waiting = len(self._jobs) + len(self._preparing) + (self._rendering is not None)
            if waiting + generating > self.max_queue + (self.scheduler.n_seq - 1 if self.scheduler else 0):
                raise QueueFull(f"{generating} request(s) generating and {waiting} waiting")
            (self._jobs if job.request.messages is None else self._preparing).append(job)
            self._cond.notify_all()

    def withdraw(self, job: Job) -> None:
        """A queued job whose client left: cancelled, and out of the queue at once (it neither
        starts nor keeps a place that another request could have)."""
        job.cancel()
        with self._cond:
            for queue in (self._jobs, self._preparing):
                if job in queue:
                    queue.remove(job)
                    self.completed += 1

    # -- chat templates render on their own thread, never on the engine's ---------------------------
    def _prepare_main(self) -> None:
        """Render each chat request's templates before it queues for the engine: a template that
        is slow (up to its time bound) or fails holds up only its own request."""
        while True:
            with self._cond:
                while not self._preparing and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._rendering = self._preparing.popleft()
            error = None if job.cancelled.is_set() else self._prerender(job)
            with self._cond:
                self._rendering = None
                if job.cancelled.is_set():  # the client left (or stop() answered it)
                    self.completed += 1
                elif error is not None:
                    job.channel.put(Failed(error), last=True)
                    self.completed += 1
                else:
                    self._jobs.append(job)
                    self._cond.notify_all()

    def _prerender(self, job: Job) -> ApiError | None:
        engine, req = self.session.engine, job.request
        try:
            prerender(
                engine.models,
                messages=with_system(req.messages or [], self.session.system_prompt),
                chat_roles=[engine.model_of[d.chat] for d in engine.deltas],
                plain_content=self.session.plain_content,
            )
        except UserError as e:
            return ApiError(400, advice(e, field_name), code="invalid_prompt")
        except Exception as e:  # noqa: BLE001 - a tokenizer failure ends this request only
            return ApiError(500, f"could not build the prompt: {type(e).__name__}: {e}", type="server_error")
        return None

    def _main(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self.running = self._jobs.popleft()
            try:
                if not job.cancelled.is_set():
                    self._run(job)
            finally:
                with self._cond:
                    self.running = None
                    self.completed += 1

    def _prompt(self, job: Job) -> dict[str, list[int]] | None:
        """The request's prompt, or None after reporting why not."""
        req = job.request
        put_last = lambda item: job.channel.put(item, last=True)  # noqa: E731
        try:
            if req.token_ids is not None:
                prompt = {name: list(req.token_ids) for name in self.session.engine.models}
            else:
                prompt = self.session.prompt(messages=req.messages, raw=req.raw)
        except PromptTooLong as e:
            put_last(
                Failed(
                    ApiError(
                        413,
                        advice(e, field_name),
                        param="messages" if req.messages is not None else "prompt",
                        code="context_length_exceeded",
                    )
                )
            )
            return None
        except UserError as e:
            put_last(Failed(ApiError(400, advice(e, field_name), code="invalid_prompt")))
            return None
        except Exception as e:  # noqa: BLE001 - a template/tokenizer failure ends this request only
            put_last(Failed(ApiError(500, f"could not build the prompt: {type(e).__name__}: {e}", type="server_error")))
            return None
        return prompt

    def _prompt_tokens(self, prompt: dict[str, list[int]]) -> int:
        return len(prompt[self.session.engine.chat_name])

    # -- batched: many requests share each round --------------------------------------------------
    def _main_batched(self) -> None:
        assert self.scheduler is not None
        while True:
            with self._cond:
                while not self._jobs and not self._live and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    break
                new, whole = self._take_jobs()
            with self.session.lock:
                for job in whole:
                    self._run_whole_job(job)
                for job in new:
                    try:
                        self._admit(job)
                    except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                        job.channel.put(
                            Failed(ApiError(500, f"could not start: {type(e).__name__}: {e}", type="server_error")), last=True
                        )
                try:
                    self.scheduler.step()
                except Exception as e:  # noqa: BLE001 - the scheduler failed as a whole: end what runs, go on
                    self._fail_live(e)
                self._forward()
        for ticket, job in list(self._live.items()):  # shutting down: every open request ends now
            ticket.cancel()
            job.channel.put(Failed(shutting_down()), last=True)
            self._retire(ticket)

    def _take_jobs(self) -> tuple[list[Job], list[Job]]:
        """(jobs to admit to the batch, echo jobs to run now); the rest keep waiting.

        An echo job (scoring) needs the engine to itself: it runs once no sequence is live, and
        while one waits no new sequence is admitted, so the batch drains instead of starving it.
        A request with several prompts joins the batch as one job per prompt (``_parts``)."""
        whole = [j for j in self._jobs if j.request.echo]
        if whole and self._live:
            return [], []
        new = [part for j in self._jobs if not j.request.echo for part in self._parts(j)]
        self._jobs.clear()
        return new, whole

    def _parts(self, job: Job) -> list[Job]:
        """A request with several prompts (no echo) as one job per prompt, sharing the batch."""
        n = len(job.request.prompts or ())
        if n <= 1:
            return [job]
        gather = Gather(job.channel, n, Started, job.cancel)  # (starts the request when its first prompt starts)
        return [Job(job.request.for_prompt(i), gather.part(i), job.cancelled, job.tokens) for i in range(n)]

    def _run_whole_job(self, job: Job) -> None:
        if not job.cancelled.is_set():
            with self._cond:
                self.running = job
            self._run_whole(job)
        with self._cond:
            self.completed += 1
            self.running = None

    def _admit(self, job: Job) -> None:
        prompt = None if job.cancelled.is_set() else self._prompt(job)
        if prompt is None:
            with self._cond:
                self.completed += 1
            return
        req = job.request
        ticket = self.scheduler.submit(prompt, req.config, rng_for(req.seed, req.index), cancel=job.cancelled.is_set)
        with self._cond:
            self._live[ticket] = job
            self._unstarted[ticket] = self._prompt_tokens(prompt)
            self.running = job

    def _forward(self) -> None:
        """Hand every live request the events its generation produced in this tick. A request
        starts (``Started``) when its sequence does: until then it waits in the scheduler, and a
        client that leaves meanwhile cancels it there (it never starts)."""
        for ticket, job in list(self._live.items()):
            if ticket in self._unstarted and (ticket.started or ticket.done):
                job.channel.put(Started(self._unstarted.pop(ticket)))
            while not ticket.events.empty():
                ev = ticket.events.get_nowait()
                if isinstance(ev, FinishedEvent):
                    job.channel.put(Failed(shutting_down()) if ev.reason == "cancelled" and self._stopping else ev, last=True)
                    self._retire(ticket)
                elif job.tokens and isinstance(ev, TokenEvent):
                    job.channel.put(ev)

    def _fail_live(self, e: Exception) -> None:
        self.session.engine.reset()  # every sequence of every context
        for ticket, job in list(self._live.items()):
            job.channel.put(Failed(ApiError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error")), last=True)
            ticket.cancel()
            self._retire(ticket)
        self.scheduler = Scheduler(self.session.engine, self.scheduler.n_seq)  # fresh slots over empty caches

    def _retire(self, ticket: Ticket) -> None:
        with self._cond:
            self._live.pop(ticket, None)
            self._unstarted.pop(ticket, None)
            self.completed += 1
            self.running = next(iter(self._live.values()), None)

    def _run_whole(self, job: Job) -> None:
        """Echo scoring / several prompts: the engine to itself (caller holds the session lock)."""
        job.channel.put(Started(0))
        try:
            answer_prompts(self.session, job.request, job.cancelled.is_set, job.channel.put)
            job.channel.put(AllAnswered(), last=True)
        except ApiError as e:
            job.channel.put(Failed(e), last=True)
        except Cancelled:  # the client went away, or the server stops: then its answer says so
            job.channel.put(Failed(shutting_down() if self._stopping else ApiError(499, "the client went away")), last=True)

    # -- one at a time -------------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        req, put = job.request, job.channel.put
        put_last = lambda item: put(item, last=True)  # noqa: E731
        with self.session.lock:
            if req.whole_engine:
                self._run_whole(job)
                return
            prompt = self._prompt(job)
            if prompt is None:
                return
            put(Started(self._prompt_tokens(prompt)))
            try:
                for ev in self.session.generate(prompt, req.config, rng_for(req.seed, 0), cancel=job.cancelled.is_set):
                    if isinstance(ev, FinishedEvent):
                        put_last(Failed(shutting_down()) if ev.reason == "cancelled" and self._stopping else ev)
                    elif job.tokens and isinstance(ev, TokenEvent):
                        put(ev)
            except Exception as e:  # noqa: BLE001 - llama.cpp refused a batch: this request fails, the server goes on
                put_last(Failed(ApiError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error")))

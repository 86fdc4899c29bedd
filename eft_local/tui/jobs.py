"""Generations for the engine worker: what to ask, which widget receives the stream.

The app runs a list of jobs on one thread worker (one ``Llama`` context is not thread-safe,
so jobs never overlap; the session's lock also keeps other users of the engine out). Each
job's messages go straight to its target widget; the app hears about the end of a job
through the widget's ``GenerationFinished`` bubbling up, or a ``JobDone`` when the widget
is gone (closed compare screen, new chat).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textual.message import Message

from eft_local.engine.config import GenerationConfig
from eft_local.engine.events import FinishedEvent, GenStats
from eft_local.engine.session import Session, rng_for
from eft_local.errors import UserError
from eft_local.settings import advice
from eft_local.tui.stream import GenerationFinished, Pacer, run_stream
from eft_local.tui.widgets.chat_view import AssistantMessage


@dataclass
class Job:
    """One generation for the worker: what to ask and which widget receives the stream."""

    messages: list[dict[str, str]]
    config: GenerationConfig
    index: int  # generation number: with --seed S it draws from rng_for(S, index)
    target: AssistantMessage


class JobDone(Message):
    """A job ended without its GenerationFinished reaching a widget."""


def run_job(
    session: Session,
    job: Job,
    *,
    seed: int | None,
    pacer: Pacer,
    cancel: Callable[[], bool],
    notify: Callable[[str], None],
) -> bool:
    """Run ``job`` on the calling (worker) thread; True when its GenerationFinished reached
    the target widget. Prompt and template errors or llama.cpp failures end this answer only."""
    delivered = False

    def post(message: Message) -> None:
        nonlocal delivered
        ok = job.target.post_message(message)
        if isinstance(message, GenerationFinished):
            delivered = ok

    try:
        prompt, dropped = session.fit(job.messages, job.config.max_tokens)
        if dropped:
            notify(f"context full: the oldest {dropped} message(s) are left out of this answer")
        run_stream(session, prompt, job.config, rng_for(seed, job.index), cancel, post, job.target, pacer=pacer)
    except Exception as e:
        text = advice(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        post(GenerationFinished(job.target, FinishedEvent("error", "", [], GenStats(), text), {}))
    return delivered

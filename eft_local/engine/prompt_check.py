"""The one check of a prompt before generation: non-empty, fits its context, ids in the vocabulary.

Used by the decoder (every generation) and by ``session.Session.prompt`` (the server's exact
prompts, which must fail before queueing), so both say the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from eft_local.errors import UserError
from eft_local.settings import Fixable


class _Context(Protocol):
    n_ctx: int
    n_vocab: int


class PromptTooLong(Fixable):
    """The prompt alone does not leave room for one generated token."""

    def __init__(self, n_tokens: int, n_ctx: int, role: str) -> None:
        super().__init__(f"the prompt is {n_tokens} tokens for {role} but n_ctx is {n_ctx}", "shorten it or raise {n_ctx}")
        self.n_tokens, self.n_ctx, self.role = n_tokens, n_ctx, role


def check_prompt(prompt: Mapping[str, list[int]], models: Mapping[str, _Context]) -> None:
    """Raise UserError (PromptTooLong for length) unless every model's prompt can be generated from."""
    for name, model in models.items():
        tokens = prompt[name]
        if not tokens:
            raise UserError("the prompt is empty: nothing to generate from")
        if len(tokens) >= model.n_ctx:
            raise PromptTooLong(len(tokens), model.n_ctx, name)
        bad = next((t for t in tokens if not 0 <= t < model.n_vocab), None)
        if bad is not None:
            raise UserError(f"prompt token id {bad} is outside {name}'s vocabulary")

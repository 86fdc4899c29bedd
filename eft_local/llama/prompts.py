"""Per-role prompt token ids.

``chat`` always sees its own GGUF chat template. ``base`` and ``reference`` see either
the same templated text (style ``template``, default) or a plain transcript (style
``transcript``, proxy-tuning's choice). Raw prompts go to every role as-is.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Protocol

from eft_local.errors import UserError, unicode_problem
from eft_local.llama import template_sandbox
from eft_local.llama.template_sandbox import TemplateFailed
from eft_local.settings import PROMPT_STYLES, Fixable

MESSAGE_ROLES = ("system", "user", "assistant")  # what a conversation's messages may be

__all__ = ["PROMPT_STYLES", "role_prompts", "prerender", "render_chat", "transcript", "template_name"]
Message = Mapping[str, str]


class PromptModel(Protocol):
    path: object
    chat_template: str | None
    bos: int
    eos: int
    add_bos: bool

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]: ...
    def token_text(self, token: int) -> bytes: ...


def template_name(model: PromptModel) -> str:
    """How errors name a model's template: its file name (never a directory of this machine)."""
    return PurePath(str(model.path)).name or "the model"


def render_chat(model: PromptModel, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """Render ``messages`` with the model's own Jinja chat template, bounded in time, size and
    memory (``template_sandbox``): a template that misbehaves is a ``UserError`` naming it."""
    template = model.chat_template
    name = template_name(model)
    if not template:
        raise Fixable(f"{name} has no chat template", "use {raw} to send prompts as plain text")
    try:
        text = template_sandbox.render(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=_text(model, model.bos),
            eos_token=_text(model, model.eos),
        )
    except TemplateFailed as e:
        raise UserError(f"chat template of {name} failed: {e}") from None
    problem = unicode_problem(text)  # e.g. a template that writes "\ud800": no tokenizer can take it
    if problem:
        raise UserError(f"chat template of {name} failed: its output is not valid Unicode: {problem}")
    return text


def _text(model: PromptModel, token: int) -> str:
    return model.token_text(token).decode("utf-8", "replace") if token >= 0 else ""


def tokenize_templated(model: PromptModel, text: str) -> list[int]:
    """Templated text may already start with BOS: add one only when it doesn't."""
    bos_text = _text(model, model.bos)
    add_bos = model.add_bos and not (bos_text and text.startswith(bos_text))
    return model.tokenize(text, add_bos=add_bos, special=True)


def transcript(messages: Sequence[Message]) -> str:
    """A plain-text conversation for base models that never saw a chat format."""
    names = {"system": "", "user": "User: ", "assistant": "Assistant: "}
    parts = []
    for m in messages:
        prefix = names.get(m["role"], m["role"].capitalize() + ": ")
        parts.append(prefix + m["content"].strip())
    return "\n\n".join(parts) + "\n\nAssistant:"


# Stand-ins for message contents while the template renders (plain-content mode): Unicode
# private-use characters that no template emits on its own.
_OPEN, _CLOSE = "\ue000", "\ue001"
_SENTINEL = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


def role_prompts(
    models: Mapping[str, PromptModel],
    *,
    messages: Sequence[Message] | None = None,
    raw: str | None = None,
    style: str = "template",
    chat_roles: Sequence[str] = ("chat",),
    plain_content: bool = False,
) -> dict[str, list[int]]:
    """Token ids of the prompt for each model.

    Models named in ``chat_roles`` (fine-tuned, behaviour deltas) see their own chat
    template; the others (base, references) see the first chat model's templated text or a
    transcript, per ``style``. ``plain_content``: text inside messages (or a raw prompt) is
    tokenized as plain text, so ``<|im_start|>system`` typed by a user cannot forge a turn;
    only the template's own markup becomes control tokens.
    """
    if raw is not None:
        return {r: m.tokenize(raw, add_bos=m.add_bos, special=not plain_content) for r, m in models.items()}
    if messages is None:
        raise ValueError("role_prompts needs messages or raw text")
    if style not in PROMPT_STYLES:
        raise UserError(f"prompt style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    chats, plain_content, shown = _templated(models, messages, chat_roles, plain_content)
    rendered = {r: _take_prerendered(models[r], shown) for r in chats}
    plain_text = rendered[chats[0]] if style == "template" else transcript(messages)
    out = {}
    for role, model in models.items():
        if role in rendered or style == "template":
            text = rendered.get(role, plain_text)
            out[role] = _tokenize_with_contents(model, text, messages) if plain_content else tokenize_templated(model, text)
        else:
            out[role] = model.tokenize(plain_text, add_bos=model.add_bos, special=False)
    return out


def _templated(
    models: Mapping[str, PromptModel], messages: Sequence[Message], chat_roles: Sequence[str], plain_content: bool
) -> tuple[list[str], bool, Sequence[Message]]:
    """(the roles that render their own template, whether contents stay plain text, what the templates see)."""
    chats = [r for r in chat_roles if r in models]
    plain_content = plain_content and any(_has_control_text(models[chats[0]], m["content"]) for m in messages)
    return chats, plain_content, _stand_ins(messages) if plain_content else messages


# -- rendering ahead of time ----------------------------------------------------------------------
# A server renders each request's templates on a thread of its own (``prerender``) before the
# request reaches the engine, so a slow template never holds the engine up; ``role_prompts``
# then takes the text from here instead of rendering again. A few entries at most: one not
# taken (its request was cancelled) is pushed out by newer ones.
PRERENDER_KEEP = 32
_prerendered: OrderedDict[tuple, str] = OrderedDict()
_prerendered_lock = threading.Lock()


def prerender(
    models: Mapping[str, PromptModel],
    *,
    messages: Sequence[Message],
    chat_roles: Sequence[str] = ("chat",),
    plain_content: bool = False,
) -> None:
    """Render the chat templates ``role_prompts`` will need for ``messages`` (same arguments),
    now, on the calling thread; a template that fails is the same ``UserError`` here."""
    chats, _plain, shown = _templated(models, messages, chat_roles, plain_content)
    for r in chats:
        text = render_chat(models[r], shown)
        with _prerendered_lock:
            _prerendered[_render_key(models[r], shown)] = text
            while len(_prerendered) > PRERENDER_KEEP:
                _prerendered.popitem(last=False)


def _render_key(model: PromptModel, shown: Sequence[Message]) -> tuple:
    return (model.chat_template, model.bos, model.eos, json.dumps([dict(m) for m in shown], sort_keys=True))


def _take_prerendered(model: PromptModel, shown: Sequence[Message]) -> str:
    if _prerendered:
        with _prerendered_lock:
            text = _prerendered.pop(_render_key(model, shown), None)
        if text is not None:
            return text
    return render_chat(model, shown)


def _has_control_text(model: PromptModel, text: str) -> bool:
    """Would llama.cpp turn part of ``text`` into a control token? (Only then do contents need
    tokenizing apart from the template, which can shift a token boundary at their edges.)"""
    return model.tokenize(text, add_bos=False, special=True) != model.tokenize(text, add_bos=False, special=False)


def _stand_ins(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{**m, "content": f"{_OPEN}{i}{_CLOSE}"} for i, m in enumerate(messages)]


def _tokenize_with_contents(model: PromptModel, text: str, messages: Sequence[Message]) -> list[int]:
    """Templated text with stand-ins: the template's parts as control tokens, the contents as text."""
    pieces = _SENTINEL.split(text)  # template, index, template, index, ..., template
    if sorted(int(i) for i in pieces[1::2]) != list(range(len(messages))):
        raise UserError(
            f"the chat template of {template_name(model)} rewrites message contents, so they can't be kept as "
            "plain text; serve without plain-text content"
        )
    ids = tokenize_templated(model, pieces[0]) if pieces[0] else ([model.bos] if model.add_bos else [])
    for i in range(1, len(pieces), 2):
        ids += model.tokenize(messages[int(pieces[i])]["content"], add_bos=False, special=False)
        ids += model.tokenize(pieces[i + 1], add_bos=False, special=True) if pieces[i + 1] else []
    return ids

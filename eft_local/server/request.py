"""HTTP request bodies -> what to generate, with OpenAI-shaped errors.

Everything that maps a request field to a generation setting, and checks it, lives here
(``setting`` and ``parse``), over the one settings schema the command line uses.
Unknown fields that don't change the answer's meaning are ignored (clients send ``user``,
``presence_penalty``, …); known fields with a wrong type or value are a 400 naming the
field, and so are fields the server cannot honour (``n`` > 1, ``best_of``, ``tools``, a
``response_format`` other than text) — ignoring those would change what the answer means.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from eft_local.engine.config import GenerationConfig, effective_settings, generation_config
from eft_local.errors import UserError, bad_text_in
from eft_local.llama.prompts import MESSAGE_ROLES
from eft_local.mix.mixture import check_known_deltas
from eft_local.server.redact import scrub
from eft_local.settings import REQUEST_KEYS, ROW_KEYS, SETTINGS, Fixable, advice, check_weights, field_name

Prompt = str | list[int]  # a completion prompt: text, or token ids of the shared vocabulary

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_STOP = 16
MAX_STOP_CHARS = 500
MAX_PROMPTS = 256  # prompts in one completion request (one choice each)
MAX_CHARS_PER_TOKEN = 64  # no tokenizer averages more: longer text can't fit, refused without tokenizing it
# One answer's log-probabilities: positions (echoed prompt tokens + max_tokens, over its prompts) x (1 + top
# alternatives). 2^20 is 48 prompts of 1,024 scored tokens with logprobs 20, or ~16,000 with logprobs 1 (lm-eval).
MAX_LOGPROB_ENTRIES = 1 << 20
MAX_ANSWER_BYTES = 64 << 20  # one non-streamed answer's JSON
MESSAGE_ROLE_NAMES = {**{role: role for role in MESSAGE_ROLES}, "developer": "system"}  # OpenAI's newer name for system


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": scrub(self.message), "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class GenRequest:
    """One parsed request: the prompt (messages or raw text) and how to generate."""

    messages: list[dict[str, str]] | None
    raw: str | None  # the one text prompt of a plain completion (else None)
    config: GenerationConfig  # config.logprobs: top alternatives per generated token (None: no logprobs)
    seed: int | None
    stream: bool
    include_usage: bool
    model: str | None
    prompts: list[Prompt] | None = None  # completions: every prompt, one choice each
    echo: bool = False  # completions: the prompt's tokens (and log-probabilities) come first
    generate: bool = True  # False: max_tokens 0 with echo, scoring only
    token_names_are_ids: bool = False  # return_tokens_as_token_ids: "token_id:N" in log-probabilities
    index: int = 0  # which prompt of its request this is: it draws from rng_for(seed, index)

    @property
    def logprobs(self) -> int | None:
        return self.config.logprobs

    @property
    def whole_engine(self) -> bool:
        """Runs with the engine to itself, one prompt after another (``answers.answer_prompts``):
        echo scoring, and several prompts on a server without ``--parallel`` (with it they
        share the batch: ``worker.EngineWorker._parts``)."""
        return self.prompts is not None and (self.echo or len(self.prompts) > 1)

    def for_prompt(self, index: int) -> GenRequest:
        """Prompt ``index`` of a several-prompt request as a request of its own (a batch shares it out)."""
        p = (self.prompts or [])[index]
        return replace(self, prompts=[p], raw=p if isinstance(p, str) else None, index=index)

    @property
    def token_ids(self) -> list[int] | None:
        """The one prompt, when it is given as token ids."""
        if self.prompts is not None and len(self.prompts) == 1 and not isinstance(self.prompts[0], str):
            return self.prompts[0]
        return None


# -- the body ---------------------------------------------------------------------------------
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def load_json(raw: bytes) -> dict[str, Any]:
    """Parse the body; NaN/Infinity, non-objects and text that isn't valid Unicode (a lone
    surrogate such as ``"\\ud800"``, in any field or key) are refused."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise bad(None, "the request body is not UTF-8", "invalid_json") from None
    except (ValueError, RecursionError) as e:
        raise bad(None, f"the request body is not valid JSON: {str(e).splitlines()[0][:200]}", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad(None, "the request body must be a JSON object", "invalid_json")
    found = bad_text_in(body)
    if found:
        where, problem = found
        raise bad(where, f"'{where}' is not valid Unicode: {problem}", "invalid_value")
    return body


# -- field checks -------------------------------------------------------------------------------
# Generation settings come from the one schema (``settings.SETTINGS``): the same names, types,
# ranges and defaults as the command line and JSONL rows. HTTP adds only OpenAI's own fields.
HTTP_SETTINGS = ROW_KEYS  # the per-prompt settings: alpha, beta, temperature, top_p, top_k, …, draft_tokens, stop
TOKEN_LIMIT = ("max_tokens", "max_completion_tokens")  # one limit: OpenAI's older and newer names for it


def _typed(name: str, v: Any) -> None:
    """JSON types first (a string is not a number here, a bool is not an integer), so the code can say which."""
    kind = SETTINGS[name].type
    if kind in (int, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad(
                name, f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {_json_type(v)}", "invalid_type"
            )
        if kind is int and isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
            raise bad(name, f"'{name}' must be an integer, got {v!r}", "invalid_type")
    elif kind is bool and not isinstance(v, bool):
        raise bad(name, f"'{name}' must be true or false", "invalid_type")
    elif kind is str and not isinstance(v, str):
        raise bad(name, f"'{name}' must be a string, got {_json_type(v)}", "invalid_type")
    elif kind is list and not (isinstance(v, str) or isinstance(v, list) and all(isinstance(x, str) for x in v)):
        raise bad(name, f"'{name}' must be a string or a list of strings", "invalid_type")


def _json_type(v: Any) -> str:
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object", type(None): "null"}.get(type(v), "a number")


def setting(name: str, v: Any, field: str | None = None) -> Any:
    """One request field checked by its setting's definition; a 400 naming the field."""
    field = field or name
    _typed(name, v)
    if name == "stop":
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP or any(len(x) > MAX_STOP_CHARS for x in stops):
            raise bad(field, f"'{field}' takes at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters")
        v = [x for x in stops if x]  # "" stops nothing: dropped, as OpenAI does
    try:
        return SETTINGS[name].check(v, f"'{field}'")
    except UserError as e:
        raise bad(field, str(e)) from None
    except (OverflowError, ValueError):  # an integer too large for a float
        raise bad(field, f"'{field}' is out of range") from None


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise bad(name, f"'{name}' must be true or false", "invalid_type")
    return v


def _one(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(name, f"'{name}' must be an integer", "invalid_type")
    if v != 1:
        raise bad(name, f"'{name}' must be 1: this server returns one choice per request", "unsupported_value")
    return 1


def parse_messages(v: Any) -> list[dict[str, str]]:
    if not isinstance(v, list) or not v:
        raise bad("messages", "'messages' must be a non-empty list of {role, content}", "invalid_type")
    out = []
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, f"'{where}' must be an object with role and content", "invalid_type")
        role = m.get("role")
        if not isinstance(role, str) or role not in MESSAGE_ROLE_NAMES:
            raise bad(
                f"{where}.role", f"'{where}.role' must be one of {', '.join(MESSAGE_ROLE_NAMES)}, got {json.dumps(role)[:40]}"
            )
        out.append({"role": MESSAGE_ROLE_NAMES[role], "content": _content(f"{where}.content", m.get("content"))})
    return out


def _content(where: str, c: Any) -> str:
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: text only
        parts = []
        for p in c:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise bad(where, f'\'{where}\' may only hold text parts ({{"type": "text", "text": ...}})')
            parts.append(p["text"])
        return "".join(parts)
    raise bad(where, f"'{where}' must be a string or a list of text parts", "invalid_type")


def _prompts(v: Any, *, n_vocab: int, n_ctx: int) -> list[Prompt]:
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    shape = "a string, a list of strings, a list of token ids or a list of token-id lists"
    if isinstance(v, str):
        return [_text_prompt("prompt", v)]
    if not isinstance(v, list) or not v:
        raise bad("prompt", f"'prompt' must be {shape}" + (" (it is empty)" if v == [] else ""), "invalid_type")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return [_ids("prompt", v, n_vocab, n_ctx)]
    if len(v) > MAX_PROMPTS:
        raise bad("prompt", f"'prompt' holds {len(v)} prompts; send at most {MAX_PROMPTS} per request")
    out: list[Prompt] = []
    for i, p in enumerate(v):
        if isinstance(p, str):
            out.append(_text_prompt(f"prompt[{i}]", p))
        elif isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
            out.append(_ids(f"prompt[{i}]", p, n_vocab, n_ctx))
        else:
            raise bad(f"prompt[{i}]", f"'prompt[{i}]' must be a string or a non-empty list of token ids", "invalid_type")
    return out


def _text_prompt(where: str, text: str) -> str:
    if not text:
        raise bad(where, f"'{where}' is empty: send the text to complete (or score)")
    return text


def _ids(where: str, ids: list[int], n_vocab: int, n_ctx: int) -> list[int]:
    bad_id = next((t for t in ids if not 0 <= t < n_vocab), None)
    if bad_id is not None:
        raise bad(where, f"'{where}' holds token id {bad_id}, outside the vocabulary (0..{n_vocab - 1})")
    if len(ids) > n_ctx:
        fact = (
            f"'{where}' is {len(ids)} tokens; the context holds {n_ctx} (at most {n_ctx} to score with echo and "
            f"max_tokens 0, {n_ctx - 1} to generate)"
        )
        raise bad(where, advice(Fixable(fact, "shorten it or raise {n_ctx}"), field_name), "context_length_exceeded")
    return list(ids)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Fields whose meaning this server cannot honour: a 400 naming the field, never ignored."""
    for name in ("n", "best_of"):
        if body.get(name) is not None:
            _one(name, body[name])
    if body.get("tools"):
        raise bad("tools", "'tools' is not supported: this server does not call tools", "unsupported_value")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise bad(
            "response_format",
            '\'response_format\' must be {"type": "text"}: structured output is not supported',
            "unsupported_value",
        )


def _logprobs(kind: str, body: Mapping[str, Any]) -> int | None:
    """How many top alternatives per token to report; None: no log-probabilities.

    Completions (legacy): ``logprobs: k``. Chat: ``logprobs: true`` with ``top_logprobs: k``.
    """
    if kind != "chat":
        return setting("logprobs", body["logprobs"]) if body.get("logprobs") is not None else None
    wanted = _bool("logprobs", body["logprobs"]) if body.get("logprobs") is not None else False
    top = setting("top_logprobs", body["top_logprobs"]) if body.get("top_logprobs") is not None else None
    if top is not None and not wanted:
        raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    return (top or 0) if wanted else None


def parse(
    kind: str,
    body: Mapping[str, Any],
    settings: Mapping[str, Any],
    *,
    n_ctx: int,
    deltas: Sequence[str] = (),
    n_vocab: int = 1 << 31,
) -> GenRequest:
    """``kind`` is "chat" (messages) or "completion" (raw prompt). ``settings`` are the server's
    (``cli.options.resolve_settings``: flags, profile defaults, built-ins); the body's fields go on
    top, exactly as a JSONL row's overrides do in ``eft-local run`` (``engine.config.effective_settings``)."""
    _refuse_fixed(body)
    _refuse_unsupported(body)
    echo = kind != "chat" and body.get("echo") is not None and setting("echo", body["echo"])
    body = dict(body)
    limit_field = _token_limit(body)
    scoring_only = echo and body.get("max_tokens") == 0 and not isinstance(body["max_tokens"], bool)
    if scoring_only:
        del body["max_tokens"]  # max_tokens 0 with echo: score the prompt, generate nothing
    effective = effective_settings(settings, _settings_layer(body, deltas, limit_field))
    config = _config(kind, body, effective)
    stream = _bool("stream", body["stream"]) if body.get("stream") is not None else False
    messages, raw, prompts = _prompt(kind, body, stream, bool(echo), n_ctx=n_ctx, n_vocab=n_vocab)
    lengths = [len(p) if isinstance(p, list) else None for p in prompts or [None]]  # (text: counted once tokenized)
    generated = config.max_tokens if not scoring_only else 0
    check_logprobs_size(logprob_positions(lengths, bool(echo), generated, n_ctx), config.logprobs)
    return GenRequest(
        messages,
        raw,
        config,
        effective["seed"],
        stream,
        _include_usage(body),
        _model(body),
        prompts,
        bool(echo),
        not scoring_only,
        body.get("return_tokens_as_token_ids") is not None
        and setting("return_tokens_as_token_ids", body["return_tokens_as_token_ids"]),
    )


def check_logprobs_size(positions: int, top: int | None) -> None:
    """A 400 that says the limit when an answer would hold more than ``MAX_LOGPROB_ENTRIES``
    log-probabilities (``positions`` scored or generated tokens, each with ``top`` alternatives)."""
    if top is None:
        return
    entries = positions * (1 + top)
    if entries > MAX_LOGPROB_ENTRIES:
        raise bad(
            "logprobs",
            f"this request asks for {entries:,} log-probabilities ((echoed prompt tokens + max_tokens) x (1 + {top} "
            f"alternatives) over its prompts); one answer holds at most {MAX_LOGPROB_ENTRIES:,}: send fewer prompts "
            "or tokens per request, or ask for fewer alternatives",
            "too_many_logprobs",
        )


def logprob_positions(prompt_lengths: Sequence[int | None], echo: bool, generated: int, n_ctx: int) -> int:
    """Positions whose log-probabilities an answer carries (an unknown length, None, counts 0): its
    echoed prompt tokens and ``generated`` per prompt, of which the engine generates at most ``n_ctx``."""
    return sum((length or 0) * echo + min(generated, n_ctx) for length in prompt_lengths)


def _refuse_fixed(body: Mapping[str, Any]) -> None:
    """A run-wide setting by eft-local's own name: refused, not silently ignored like a foreign field."""
    fixed = next((name for name in body if name in SETTINGS and name not in (*HTTP_SETTINGS, *REQUEST_KEYS)), None)
    if fixed is not None:
        flag = SETTINGS[fixed].cli_flag
        raise bad(fixed, f"'{fixed}' is fixed when the server starts ({flag}); it can't change per request", "unsupported_value")


def _token_limit(body: dict[str, Any]) -> str:
    """``max_completion_tokens`` (chat and completions alike) moved to ``max_tokens``, which it
    means; both given with different values is a 400. Returns the field the limit came from."""
    given = [name for name in TOKEN_LIMIT if body.get(name) is not None]
    if len(given) == 2:
        old, new = body["max_tokens"], body["max_completion_tokens"]
        if isinstance(old, bool) or isinstance(new, bool) or old != new:
            raise bad(
                "max_completion_tokens",
                f"'max_tokens' ({json.dumps(old)[:40]}) and 'max_completion_tokens' ({json.dumps(new)[:40]}) disagree: "
                "they are the same limit; send one of them",
            )
    if "max_completion_tokens" in given:
        body["max_tokens"] = body.pop("max_completion_tokens")
    return given[-1] if given else "max_tokens"


def _settings_layer(body: Mapping[str, Any], deltas: Sequence[str], limit_field: str = "max_tokens") -> dict[str, Any]:
    """The request's own settings (and delta weights), each checked by its Setting."""
    layer: dict[str, Any] = {}
    for name in HTTP_SETTINGS:
        if body.get(name) is not None:
            layer[name] = setting(name, body[name], limit_field if name == "max_tokens" else name)
    if body.get("weights") is not None:
        try:
            layer["weights"] = check_weights(body["weights"], "'weights'")
            check_known_deltas([n for n in layer["weights"] if n != "chat"], deltas, "'weights'.{}".format)
        except (UserError, OverflowError) as e:
            raise bad("weights", str(e) if isinstance(e, UserError) else "'weights' holds a number out of range") from None
    return layer


def _config(kind: str, body: Mapping[str, Any], effective: dict[str, Any]) -> GenerationConfig:
    try:
        config = generation_config(effective)
        config.logprobs = _logprobs(kind, body)
        config.sampling.validate()
    except UserError as e:
        raise bad(None, str(e)) from None
    return config


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad("stream_options", "'stream_options' must be an object", "invalid_type")
    if options.get("include_usage") is None:
        return False
    return _bool("stream_options.include_usage", options["include_usage"])


def _model(body: Mapping[str, Any]) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", "'model' must be a string", "invalid_type")
    return model


def _prompt(
    kind: str, body: Mapping[str, Any], stream: bool, echo: bool, *, n_ctx: int, n_vocab: int
) -> tuple[list[dict[str, str]] | None, str | None, list[Prompt] | None]:
    """(messages, the one raw text prompt, every completion prompt), checked against the context size."""
    if kind == "chat":
        messages = parse_messages(body.get("messages"))
        _check_size(None, messages, n_ctx)
        return messages, None, None
    if "prompt" not in body:
        raise bad("prompt", "'prompt' is required", "missing_field")
    prompts = _prompts(body["prompt"], n_vocab=n_vocab, n_ctx=n_ctx)
    if stream and len(prompts) > 1:
        raise bad("stream", "'stream' takes one prompt per request; send the prompts one by one or stream: false")
    if stream and echo:
        raise bad("stream", "'echo' with 'stream' is not supported; send stream: false", "unsupported_value")
    _check_size(prompts, None, n_ctx)
    raw = prompts[0] if len(prompts) == 1 and isinstance(prompts[0], str) else None
    return None, raw, prompts


def _check_size(prompts: list[Prompt] | None, messages: list[dict[str, str]] | None, n_ctx: int) -> None:
    """Refuse, before tokenizing, text that can't fit the context whatever the tokenizer."""
    if messages is not None and len(messages) > n_ctx:  # every real chat template spends a token or more per message
        raise ApiError(
            413,
            f"{len(messages)} messages can't fit a context of {n_ctx} tokens; send fewer",
            param="messages",
            code="context_length_exceeded",
        )
    if prompts is not None:
        chars = max((len(p) for p in prompts if isinstance(p, str)), default=0)
    else:
        chars = sum(len(m["content"]) for m in messages or ())
    if chars > MAX_CHARS_PER_TOKEN * n_ctx:
        raise ApiError(
            413,
            f"the prompt has {chars} characters: far more than the context of {n_ctx} tokens holds; shorten it",
            param="prompt" if prompts is not None else "messages",
            code="context_length_exceeded",
        )

"""HTTP request bodies -> what to generate, with OpenAI-shaped errors.

Everything that maps a request field to a generation setting, and checks it, lives here
(``setting`` and ``parse``), over the one settings schema the command line uses.
Unknown fields are ignored (clients send ``user``, ``presence_penalty``, …); known fields
with a wrong type or value are a 400 naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eft_local.engine.config import GenerationConfig, effective_settings, generation_config
from eft_local.errors import UserError
from eft_local.mix.mixture import check_known_deltas
from eft_local.settings import ROW_KEYS, SETTINGS, check_weights

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_STOP = 16
MAX_STOP_CHARS = 500
MAX_CHARS_PER_TOKEN = 64  # no tokenizer averages more: longer text can't fit, refused without tokenizing it
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


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
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class GenRequest:
    """One parsed request: the prompt (messages or raw text) and how to generate."""

    messages: list[dict[str, str]] | None
    raw: str | None
    config: GenerationConfig
    seed: int | None
    stream: bool
    include_usage: bool
    model: str | None


# -- the body ---------------------------------------------------------------------------------
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def load_json(raw: bytes) -> dict[str, Any]:
    """Parse the body; NaN/Infinity and non-objects are refused."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise bad(None, "the request body is not UTF-8", "invalid_json") from None
    except (ValueError, RecursionError) as e:
        raise bad(None, f"the request body is not valid JSON: {str(e).splitlines()[0][:200]}", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad(None, "the request body must be a JSON object", "invalid_json")
    return body


# -- field checks -------------------------------------------------------------------------------
# Generation settings come from the one schema (``settings.SETTINGS``): the same names, types,
# ranges and defaults as the command line and JSONL rows. HTTP adds only OpenAI's own fields.
HTTP_SETTINGS = (*ROW_KEYS, "draft_tokens", "stop")  # ROW_KEYS: alpha, beta, temperature, top_p, top_k, …
ALIASES = {"max_completion_tokens": "max_tokens"}  # OpenAI's newer name wins over max_tokens


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
    elif kind is str and not isinstance(v, str):
        raise bad(name, f"'{name}' must be a string, got {_json_type(v)}", "invalid_type")
    elif kind is list and not (isinstance(v, str) or isinstance(v, list) and all(isinstance(x, str) for x in v)):
        raise bad(name, f"'{name}' must be a string or a list of strings", "invalid_type")


def _json_type(v: Any) -> str:
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object", type(None): "null"}.get(type(v), "a number")


def setting(name: str, v: Any, field_name: str | None = None) -> Any:
    """One request field checked by its setting's definition; a 400 naming the field."""
    field_name = field_name or name
    _typed(name, v)
    if name == "stop":
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP or any(len(x) > MAX_STOP_CHARS for x in stops):
            raise bad(field_name, f"'{field_name}' takes at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters")
        v = [_utf8(field_name, x) for x in stops if x]  # "" stops nothing: dropped, as OpenAI does
    try:
        return SETTINGS[name].check(v, f"'{field_name}'")
    except UserError as e:
        raise bad(field_name, str(e)) from None
    except (OverflowError, ValueError):  # an integer too large for a float
        raise bad(field_name, f"'{field_name}' is out of range") from None


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


def _utf8(where: str, text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(where, f"'{where}' holds a lone surrogate (\\ud800-\\udfff): not encodable as UTF-8") from None
    return text


def _messages(v: Any) -> list[dict[str, str]]:
    if not isinstance(v, list) or not v:
        raise bad("messages", "'messages' must be a non-empty list of {role, content}", "invalid_type")
    out = []
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, f"'{where}' must be an object with role and content", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"'{where}.role' must be one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}")
        out.append({"role": ROLES[role], "content": _content(f"{where}.content", m.get("content"))})
    return out


def _content(where: str, c: Any) -> str:
    if c is None:
        return ""
    if isinstance(c, str):
        return _utf8(where, c)
    if isinstance(c, list):  # content parts: text only
        parts = []
        for p in c:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise bad(where, f'\'{where}\' may only hold text parts ({{"type": "text", "text": ...}})')
            parts.append(_utf8(where, p["text"]))
        return "".join(parts)
    raise bad(where, f"'{where}' must be a string or a list of text parts", "invalid_type")


def _prompt(v: Any) -> str:
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, list):
        raise bad("prompt", "'prompt' must be one string (one prompt per request)")
    if not isinstance(v, str):
        raise bad("prompt", "'prompt' must be a string", "invalid_type")
    return _utf8("prompt", v)


def parse(
    kind: str, body: Mapping[str, Any], settings: Mapping[str, Any], *, n_ctx: int, deltas: Sequence[str] = ()
) -> GenRequest:
    """``kind`` is "chat" (messages) or "completion" (raw prompt). ``settings`` are the server's
    (``cli.resolve_settings``: flags, profile defaults, built-ins); the body's fields go on top,
    exactly as a JSONL row's overrides do in ``eft-local run`` (``batch.effective_settings``)."""
    layer: dict[str, Any] = {}
    for name in HTTP_SETTINGS:
        if body.get(name) is not None:
            layer[name] = setting(name, body[name])
    for alias, name in ALIASES.items():
        if body.get(alias) is not None:
            layer[name] = setting(name, body[alias], alias)
    if body.get("weights") is not None:
        try:
            layer["weights"] = check_weights(body["weights"], "'weights'")
            check_known_deltas([n for n in layer["weights"] if n != "chat"], deltas, "'weights'.{}".format)
        except (UserError, OverflowError) as e:
            raise bad("weights", str(e) if isinstance(e, UserError) else "'weights' holds a number out of range") from None
    for name in ("n",):
        if body.get(name) is not None:
            _one(name, body[name])
    stream = _bool("stream", body["stream"]) if body.get("stream") is not None else False

    effective = effective_settings(settings, layer)
    effective["max_tokens"] = min(effective["max_tokens"], n_ctx)  # a generation can't outgrow the context anyway
    try:
        config = generation_config(effective)
        config.sampling.validate()
    except UserError as e:
        raise bad(None, str(e)) from None

    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise bad("stream_options", "'stream_options' must be an object", "invalid_type")
        if options.get("include_usage") is not None:
            include_usage = _bool("stream_options.include_usage", options["include_usage"])

    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", "'model' must be a string", "invalid_type")

    if kind == "chat":
        messages, raw = _messages(body.get("messages")), None
    else:
        if "prompt" not in body:
            raise bad("prompt", "'prompt' is required", "missing_field")
        messages, raw = None, _prompt(body["prompt"])
    chars = len(raw) if raw is not None else sum(len(m["content"]) for m in messages)
    if messages is not None and len(messages) > n_ctx:  # every real chat template spends a token or more per message
        raise ApiError(
            413,
            f"{len(messages)} messages can't fit a context of {n_ctx} tokens; send fewer",
            param="messages",
            code="context_length_exceeded",
        )
    if chars > MAX_CHARS_PER_TOKEN * n_ctx:
        raise ApiError(
            413,
            f"the prompt has {chars} characters: far more than the context of {n_ctx} tokens holds; shorten it",
            param="prompt" if raw is not None else "messages",
            code="context_length_exceeded",
        )
    return GenRequest(messages, raw, config, effective["seed"], stream, include_usage, model)

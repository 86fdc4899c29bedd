"""HTTP request bodies -> what to generate, with OpenAI-shaped errors.

Everything that maps a request field to a generation setting, and checks it, lives here
(``FIELDS`` and ``parse``), so it can follow one settings schema with the command line.
Unknown fields are ignored (clients send ``user``, ``presence_penalty``, …); known fields
with a wrong type or value are a 400 naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ..decoder import GenerationConfig
from ..errors import UserError
from ..sampling import TOP_P_MODES, SamplingParams

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_STOP = 16
MAX_STOP_CHARS = 500
TINY_TEMPERATURE = 1e-3  # below this, 1/T overflows float32 logits: treated as greedy
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: Mapping[str, str] | None = None) -> None:
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
def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad(name, f"'{name}' must be a number, got {type(v).__name__}", "invalid_type")
    v = float(v) if not isinstance(v, int) or abs(v) < 2**63 else math.copysign(math.inf, v)
    if not math.isfinite(v):
        raise bad(name, f"'{name}' must be a finite number")
    return v


def _integer(name: str, v: Any) -> int:
    if isinstance(v, float) and v.is_integer() and math.isfinite(v):
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(name, f"'{name}' must be an integer, got {type(v).__name__}", "invalid_type")
    return v


def _ranged(conv: Callable[[str, Any], Any], lo: float | None, hi: float | None, *, lo_open: bool = False, hi_open: bool = False):
    def check(name: str, v: Any) -> Any:
        v = conv(name, v)
        if lo is not None and (v < lo or (lo_open and v == lo)) or hi is not None and (v > hi or (hi_open and v == hi)):
            if hi is None:
                want = f"> {lo:g}" if lo_open else f">= {lo:g}"
            else:
                want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise bad(name, f"'{name}' must be {want}, got {v}")
        return v
    return check


def _choice(options: tuple[str, ...]):
    def check(name: str, v: Any) -> str:
        if v not in options:
            raise bad(name, f"'{name}' must be one of {', '.join(options)}, got {json.dumps(v)[:60]}")
        return v
    return check


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise bad(name, f"'{name}' must be true or false", "invalid_type")
    return v


def _one(name: str, v: Any) -> int:
    if _integer(name, v) != 1:
        raise bad(name, f"'{name}' must be 1: this server returns one choice per request", "unsupported_value")
    return 1


def _stop(name: str, v: Any) -> tuple[str, ...]:
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad(name, f"'{name}' must be a string or a list of strings", "invalid_type")
    if len(stops) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise bad(name, f"'{name}' takes at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters")
    return tuple(_utf8(name, s) for s in stops if s)


def _weights(name: str, v: Any) -> dict[str, float]:
    if not isinstance(v, dict):
        raise bad(name, f"'{name}' must be an object of name -> number", "invalid_type")
    return {str(k): _ranged(_number, -100, 100)(f"{name}.{k}", x) for k, x in v.items()}


# name -> (check, where it goes: "sampling" | "config" | "request")
FIELDS: dict[str, tuple[Callable[[str, Any], Any], str]] = {
    "temperature": (_ranged(_number, 0, 100), "sampling"),
    "top_p": (_ranged(_number, 0, 1, lo_open=True), "sampling"),
    "top_k": (_ranged(_integer, 0, 1 << 30), "sampling"),
    "min_p": (_ranged(_number, 0, 1, hi_open=True), "sampling"),
    "top_p_mode": (_choice(TOP_P_MODES), "sampling"),
    "alpha": (_ranged(_number, -100, 100), "sampling"),
    "beta": (_ranged(_number, -100, 100), "sampling"),
    "weights": (_weights, "sampling"),
    "max_tokens": (_ranged(_integer, 1, None), "config"),
    "max_completion_tokens": (_ranged(_integer, 1, None), "config"),
    "draft_tokens": (_ranged(_integer, 0, 64), "config"),
    "stop": (_stop, "config"),
    "seed": (_ranged(_integer, 0, (1 << 64) - 1), "request"),
    "n": (_one, "request"),
    "stream": (_bool, "request"),
}


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


def _utf8(where: str, text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(where, f"'{where}' holds a lone surrogate (\\ud800-\\udfff): not encodable as UTF-8") from None
    return text


def _content(where: str, c: Any) -> str:
    if c is None:
        return ""
    if isinstance(c, str):
        return _utf8(where, c)
    if isinstance(c, list):  # content parts: text only
        parts = []
        for p in c:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise bad(where, f"'{where}' may only hold text parts ({{\"type\": \"text\", \"text\": ...}})")
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


def parse(kind: str, body: Mapping[str, Any], defaults: GenerationConfig, *, n_ctx: int, seed: int | None = None) -> GenRequest:
    """``kind`` is "chat" (messages) or "completion" (raw prompt). Server defaults fill what the body leaves out."""
    values: dict[str, Any] = {}
    for name, (check, _) in FIELDS.items():
        if body.get(name) is not None:
            values[name] = check(name, body[name])

    sampling_fields = {f.name for f in fields(SamplingParams)}
    sampling = {k: v for k, v in values.items() if FIELDS[k][1] == "sampling" and k in sampling_fields}
    if 0 < sampling.get("temperature", 1.0) < TINY_TEMPERATURE:
        sampling["temperature"] = 0.0
    params = replace(defaults.sampling, **sampling)
    try:
        params.validate()
    except UserError as e:
        raise bad(None, str(e).replace("--", "").replace("-", "_", 1)) from None

    extra = {}  # behaviour-delta weights, where the decoder has them
    if "weights" in values and "weights" in {f.name for f in fields(GenerationConfig)}:
        extra["weights"] = values["weights"]
    max_tokens = values.get("max_completion_tokens", values.get("max_tokens", defaults.max_tokens))
    config = replace(
        defaults,
        sampling=params,
        max_tokens=min(max_tokens, n_ctx),  # a generation can't outgrow the context anyway
        draft_tokens=values.get("draft_tokens", defaults.draft_tokens),
        stop=values.get("stop", defaults.stop),
        trace=False,
        **extra,
    )

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
    return GenRequest(messages, raw, config, values.get("seed", seed), values.get("stream", False), include_usage, model)

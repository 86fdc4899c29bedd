"""Request bodies: JSON values of unexpected types are a 400 naming the field."""

from __future__ import annotations

import httpx

from eft_local.server.request import ApiError, parse
from tests.conftest import server_settings

# -- 5: JSON values of unexpected types are 400 naming the field ---------------------------------------------
VALUES = [None, True, 0, -1, 10**400, 1.5, 1e308, "x", "", [], [1], ["a"], [[1]], {}, {"a": 1}, {"role": "user"}]


def test_a_role_that_is_a_list_or_an_object_is_400_naming_it(serve):
    srv = serve()
    for role in (["user"], {"a": 1}, 5, None, True):
        body = {"messages": [{"role": "user", "content": "hi"}, {"role": role, "content": "x"}]}
        r = httpx.post(srv.url + "/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].role", r.text


def test_every_field_of_every_json_type_is_a_400_or_accepted_never_a_crash():
    settings = server_settings()
    fields = ["model", "messages", "prompt", "stream", "stream_options", "n", "stop", "weights", "seed", "max_tokens",
              "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "typical_p", "top_p_mode", "alpha",
              "beta", "draft_tokens", "logprobs", "top_logprobs", "echo", "user"]  # fmt: skip
    bodies = []
    for v in VALUES:
        bodies += [("chat", {"messages": [{"role": "user", "content": "hi"}], f: v}) for f in fields]
        bodies += [("completion", {"prompt": "hi", f: v}) for f in fields]
        msg = {"role": "user", "content": "hi"}
        bodies += [("chat", {"messages": [{**msg, k: v}]}) for k in ("role", "content", "name")]
        bodies += [("chat", {"messages": [v]}), ("chat", {"messages": [{**msg, "content": [{"type": "text", "text": v}]}]})]
        bodies += [
            ("chat", {"messages": [{**msg, "content": [{"type": v, "text": "x"}]}]}),
            ("chat", {"messages": [{**msg, "content": [v]}]}),
        ]
        bodies += [
            ("chat", {"messages": [msg], "stream_options": {"include_usage": v}}),
            ("chat", {"messages": [msg], "stop": [v]}),
        ]
        bodies += [("chat", {"messages": [msg], "weights": {"chat": v}}), ("chat", {"messages": [msg], "weights": {"nope": v}})]
    for kind, body in bodies:
        try:
            parse(kind, body, settings, n_ctx=512)
        except ApiError as e:
            assert e.status in (400, 413) and (e.param is None or isinstance(e.param, str)), e.message

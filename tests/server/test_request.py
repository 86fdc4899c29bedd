"""Request bodies: JSON values of unexpected types are a 400 naming the field."""

from __future__ import annotations

import httpx
import pytest

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


# -- issue 23 item 7: max_completion_tokens is max_tokens wherever it is taken --------------------------------
@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
def test_either_name_of_the_token_limit_is_honoured(kind, name):
    body = {"messages": [{"role": "user", "content": "hi"}]} if kind == "chat" else {"prompt": "hi"}
    assert parse(kind, {**body, name: 7}, server_settings(), n_ctx=512).config.max_tokens == 7
    assert (
        parse(kind, {**body, "max_tokens": 7, "max_completion_tokens": 7.0}, server_settings(), n_ctx=512).config.max_tokens == 7
    )
    with pytest.raises(ApiError, match=f"^'{name}' must be in") as e:
        parse(kind, {**body, name: -1}, server_settings(), n_ctx=512)
    assert e.value.param == name


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize(("old", "new"), [(0, 5), (5, 0), (3, 4), (True, 1), (4, "4")])
def test_contradicting_token_limits_are_a_400(kind, old, new):
    body = {"messages": [{"role": "user", "content": "hi"}]} if kind == "chat" else {"prompt": "hi", "echo": True}
    with pytest.raises(ApiError, match="'max_tokens' .* and 'max_completion_tokens' .* disagree") as e:
        parse(kind, {**body, "max_tokens": old, "max_completion_tokens": new}, server_settings(), n_ctx=512)
    assert e.value.status == 400 and e.value.param == "max_completion_tokens"


def test_echo_with_max_completion_tokens_0_scores_only_and_5_generates():
    score = parse("completion", {"prompt": "hi", "echo": True, "max_completion_tokens": 0}, server_settings(), n_ctx=512)
    assert score.echo and not score.generate
    gen = parse("completion", {"prompt": "hi", "echo": True, "max_completion_tokens": 5}, server_settings(), n_ctx=512)
    assert gen.echo and gen.generate and gen.config.max_tokens == 5


def test_the_issue_example_is_a_400_and_either_field_alone_works_over_http(serve):
    srv = serve()
    url = srv.url + "/v1/completions"
    r = httpx.post(url, json={"prompt": "hello", "max_tokens": 0, "echo": True, "max_completion_tokens": 5, "logprobs": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens", r.text
    r = httpx.post(url, json={"prompt": "hello", "echo": True, "max_completion_tokens": 5, "temperature": 0}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0, r.text
    assert r.json()["choices"][0]["text"].startswith("hello")
    r = httpx.post(url, json={"prompt": "hello", "echo": True, "max_completion_tokens": 0, "logprobs": 1}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 0, r.text
    chat = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    r = httpx.post(srv.url + "/v1/chat/completions", json={**chat, "max_completion_tokens": 3}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    r = httpx.post(srv.url + "/v1/chat/completions", json={**chat, "max_tokens": 2, "max_completion_tokens": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"


# -- issue 21 §1: the engine clamps max_tokens; the server words its advice in its own terms -----------------
def test_token_ids_beyond_the_context_advise_the_servers_own_flag_not_a_cli_one():
    with pytest.raises(ApiError) as e:
        parse("completion", {"prompt": [5] * 513}, server_settings(), n_ctx=512)
    assert e.value.code == "context_length_exceeded" and e.value.param == "prompt"
    assert e.value.message.endswith("; shorten it or raise the server's --n-ctx"), e.value.message  # was "raise --n-ctx"


def test_max_tokens_beyond_the_context_is_left_to_the_engine_and_counts_as_the_context():
    body = {"prompt": [5] * 10, "max_tokens": 10**6, "logprobs": 20, "echo": True}
    assert parse("completion", body, server_settings(), n_ctx=512).config.max_tokens == 10**6  # the engine clamps
    # a prompt generates at most its context: 10 + 512 positions x 21 entries each, not 10 + 10^6
    parse("completion", {**body, "prompt": [[5] * 10] * 95}, server_settings(), n_ctx=512)
    with pytest.raises(ApiError, match="log-probabilities"):
        parse("completion", {**body, "prompt": [[5] * 10] * 96}, server_settings(), n_ctx=512)

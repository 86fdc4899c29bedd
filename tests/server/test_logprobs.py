"""The server's log-probabilities (issue 16 §1, §2): echo scoring against llama-cpp-python's own
logits combined in float64, token-id and list prompts, generated-token logprobs, chat logprobs
through the official ``openai`` client, the tokenizer endpoints, variants, and the 400s."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from eft_local.engine.decoder import EftEngine
from eft_local.engine.session import Session
from eft_local.llama.synthetic import CHATML_TEMPLATE, IM_END, ModelSpec, write_model
from eft_local.server.app import ServerOptions, create_app
from tests.conftest import ServerThread, server_settings
from tests.engine.test_scoring import TOL, expected_logprobs

openai = pytest.importorskip("openai")

MODEL = "eft-two-deltas"
N_CTX = 256
MIX = {"alpha": 0.7, "beta": 1.4, "weights": {"safe": -0.3}}
VARIANTS = {"beta-1.5": {"beta": 1.5}, "chat-only": {"alpha": 1.0, "beta": 0.0, "weights": {"safe": 0.0}}}
TEXT = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def paths(family, tmp_path_factory):
    d = tmp_path_factory.mktemp("server-deltas")
    spec = ModelSpec(name="safe", output_shift=0.9, shift_seed=33, chat_template=CHATML_TEMPLATE, eos_id=IM_END)
    return {**family.paths(), "safe": write_model(d / "safe.gguf", spec, seed=0)}


def serve(paths, parallel: int = 1, api_key: str | None = None) -> tuple[ServerThread, Session]:
    engine = EftEngine.load(paths, n_ctx=N_CTX, n_threads=1, n_seq=parallel)
    session = Session(engine)
    options = ServerOptions(
        model_name=MODEL, settings=server_settings(**MIX), variants=VARIANTS, parallel=parallel, api_key=api_key
    )
    return ServerThread(create_app(session, options)), session


@pytest.fixture(scope="module")
def served(paths):
    srv, session = serve(paths)
    yield srv
    srv.stop()
    session.close()


@pytest.fixture(scope="module")
def engine(served):
    return served.app.state.eft.session.engine


def post(srv, path: str, body: dict) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=60)


def completion(srv, **body) -> dict:
    r = post(srv, "/v1/completions", {"model": MODEL, **body})
    assert r.status_code == 200, r.text
    return r.json()


def tokenize(srv, text: str, special: bool = True) -> list[int]:
    return post(srv, "/tokenize", {"prompt": text, "add_special_tokens": special}).json()["tokens"]


def coef(engine, **settings) -> dict[str, float]:
    from eft_local.mix.params import SamplingParams

    mix = {**MIX, **settings}
    return engine.coefficients(SamplingParams(alpha=mix["alpha"], beta=mix["beta"], weights=mix["weights"]))


# -- echo: the EFT log-probabilities of a prompt ---------------------------------------------------
def test_echo_logprobs_match_llama_cpp_python(served, engine, paths):
    body = completion(served, prompt=TEXT, echo=True, max_tokens=0, logprobs=3)
    ids = tokenize(served, TEXT)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    want = expected_logprobs(paths, coef(engine), ids, engine.vocab.n)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    np.testing.assert_allclose(lp["token_logprobs"][1:], [want[i, t] for i, t in enumerate(ids[1:])], atol=TOL)
    for i, top in enumerate(lp["top_logprobs"][1:]):  # top 3 plus the token itself, keyed by text
        best = want[i, np.argsort(-want[i])[:3]]  # (byte tokens share the text "\ufffd": a key may merge ids)
        assert max(top.values()) == pytest.approx(best[0], abs=TOL)
        assert all(np.min(np.abs(best - v)) < TOL or v == lp["token_logprobs"][i + 1] for v in top.values())
        assert lp["token_logprobs"][i + 1] in top.values()
    assert "".join(lp["tokens"]).removeprefix(" ") == choice["text"] == TEXT
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(ids))]
    assert choice["finish_reason"] == "length" and body["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": 0,
        "total_tokens": len(ids),
    }


def test_token_id_and_list_prompts_are_one_choice_each(served):
    a, b = tokenize(served, "hello there"), tokenize(served, "general kenobi, you are a bold one")
    both = completion(served, prompt=[a, b], echo=True, max_tokens=1, logprobs=1, temperature=0)
    assert [c["index"] for c in both["choices"]] == [0, 1]
    for ids, choice in zip((a, b), both["choices"]):
        alone = completion(served, prompt=ids, echo=True, max_tokens=1, logprobs=1, temperature=0)["choices"][0]
        assert choice["logprobs"] == alone["logprobs"] and choice["text"] == alone["text"]
        lps = choice["logprobs"]
        assert len(lps["token_logprobs"]) == len(ids) + 1  # every prompt token, then the generated one
        # lm-eval's greedy test: a greedy token's logprob is the largest of its top_logprobs, exactly
        assert lps["token_logprobs"][-1] == max(lps["top_logprobs"][-1].values())
    texts = completion(served, prompt=["hello there", "general kenobi, you are a bold one"], echo=True, max_tokens=0, logprobs=0)
    assert [c["logprobs"]["token_logprobs"] for c in texts["choices"]] == [
        c["logprobs"]["token_logprobs"][:-1] for c in both["choices"]
    ]


def test_generated_token_logprobs_equal_the_echo_of_the_whole_text(served):
    gen = completion(served, prompt=TEXT, max_tokens=8, logprobs=2, temperature=0.8, seed=3, return_tokens_as_token_ids=True)
    lp = gen["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == gen["usage"]["completion_tokens"] and all(v is not None for v in lp["token_logprobs"])
    ids = tokenize(served, TEXT)
    gen_ids = [int(t.removeprefix("token_id:")) for t in lp["tokens"]]
    echo = completion(served, prompt=ids + gen_ids, echo=True, max_tokens=0, logprobs=2)
    np.testing.assert_allclose(echo["choices"][0]["logprobs"]["token_logprobs"][len(ids) :], lp["token_logprobs"], atol=TOL)


# -- chat: logprobs through the official client ---------------------------------------------------
def test_chat_logprobs_through_openai_client_blocking_and_streamed(served):
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "hello there"}]
    r = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=10, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens > 0
    for item in content:
        assert len(item.top_logprobs) == 2 and item.logprob == item.top_logprobs[0].logprob  # greedy
        assert bytes(item.bytes).decode("utf-8", "replace") == item.token
    assert "".join(c.token for c in content).startswith(r.choices[0].message.content)
    streamed = []
    for chunk in client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=10, temperature=0, logprobs=True, top_logprobs=2, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed += chunk.choices[0].logprobs.content
    assert [c.token for c in streamed] == [c.token for c in content]  # (a reused cache rounds differently)
    np.testing.assert_allclose([c.logprob for c in streamed], [c.logprob for c in content], atol=TOL)
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


# -- tokenizer endpoints ------------------------------------------------------------------------
def test_tokenizer_endpoints(served, engine):
    info = httpx.get(served.url + "/tokenizer_info").json()
    assert info["eos_token"] and info["model_max_length"] == N_CTX and "bos_token" in info and "pad_token" in info
    with_bos, without = tokenize(served, TEXT), tokenize(served, TEXT, special=False)
    assert with_bos == engine.chat.tokenize(TEXT, add_bos=engine.chat.add_bos, special=True)
    assert without == engine.chat.tokenize(TEXT, add_bos=False, special=True)
    r = post(served, "/tokenize", {"prompt": TEXT}).json()
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == N_CTX
    chat_ids = post(served, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()["tokens"]
    assert chat_ids == engine.prompt(messages=[{"role": "user", "content": "hi"}])[engine.chat_name]
    assert post(served, "/detokenize", {"tokens": without}).json() == {"prompt": TEXT}
    assert post(served, "/detokenize", {"tokens": [10**9]}).status_code == 400
    assert post(served, "/tokenize", {"prompt": 3}).json()["error"]["param"] == "prompt"


def test_api_key_guards_the_tokenizer_too(paths):
    srv, session = serve(paths, api_key="sekrit")
    try:
        assert httpx.get(srv.url + "/tokenizer_info").status_code == 401
        assert httpx.post(srv.url + "/tokenize", json={"prompt": "x"}).status_code == 401
        ok = httpx.post(srv.url + "/detokenize", json={"tokens": [5]}, headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200
    finally:
        srv.stop()
        session.close()


# -- variants ------------------------------------------------------------------------------------
def test_variants_are_models_with_their_own_settings(served, engine, paths):
    listed = [m["id"] for m in httpx.get(served.url + "/v1/models").json()["data"]]
    assert listed == [MODEL, *VARIANTS]
    ids = tokenize(served, TEXT)
    variant = completion(served, model="beta-1.5", prompt=ids, echo=True, max_tokens=0, logprobs=0)
    assert variant["model"] == "beta-1.5"
    same = completion(served, prompt=ids, echo=True, max_tokens=0, logprobs=0, beta=1.5)
    assert variant["choices"][0]["logprobs"] == same["choices"][0]["logprobs"]
    want = expected_logprobs(paths, coef(engine, beta=1.5), ids, engine.vocab.n)
    np.testing.assert_allclose(
        variant["choices"][0]["logprobs"]["token_logprobs"][1:], [want[i, t] for i, t in enumerate(ids[1:])], atol=TOL
    )
    # the request's own fields go on top of the variant's
    over = completion(
        served, model="chat-only", prompt=ids, echo=True, max_tokens=0, logprobs=0, alpha=0.7, beta=1.5, weights={"safe": -0.3}
    )
    assert over["choices"][0]["logprobs"] == variant["choices"][0]["logprobs"]
    assert post(served, "/v1/completions", {"model": "beta-9", "prompt": "x"}).json()["error"]["code"] == "model_not_found"


# -- what the server refuses -------------------------------------------------------------------------
REFUSED = [
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs", "invalid_value"),
    ("/v1/chat/completions", {"logprobs": 1}, "logprobs", "invalid_type"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_value"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format", "unsupported_value"),
    ("/v1/completions", {"logprobs": 1.5}, "logprobs", "invalid_type"),
    ("/v1/completions", {"logprobs": True}, "logprobs", "invalid_type"),
    ("/v1/completions", {"logprobs": 21}, "logprobs", "invalid_value"),
    ("/v1/completions", {"echo": "yes"}, "echo", "invalid_type"),
    ("/v1/completions", {"prompt": [-1, 5]}, "prompt", "invalid_value"),
    ("/v1/completions", {"prompt": [[5, 6], [5, 10**9]]}, "prompt[1]", "invalid_value"),
    ("/v1/completions", {"prompt": [[5], []]}, "prompt[1]", "invalid_type"),
    ("/v1/completions", {"prompt": ["a", ""]}, "prompt[1]", "invalid_value"),
    ("/v1/completions", {"prompt": ""}, "prompt", "invalid_value"),
    ("/v1/completions", {"prompt": [5] * (N_CTX + 1), "echo": True, "max_tokens": 0}, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"max_tokens": 0}, "max_tokens", "invalid_value"),
    ("/v1/completions", {"best_of": 3}, "best_of", "unsupported_value"),
    ("/v1/completions", {"n": 2}, "n", "unsupported_value"),
]


@pytest.mark.parametrize("path,extra,param,code", REFUSED, ids=[f"{i}-{r[2]}" for i, r in enumerate(REFUSED)])
def test_refused_with_a_400_naming_the_field(served, path, extra, param, code):
    base = {"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"}
    r = post(served, path, {**base, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code) and "\n" not in err["message"]
    if code == "context_length_exceeded":
        assert str(N_CTX) in err["message"]


def test_fields_that_do_not_change_the_answer_stay_accepted(served):
    body = completion(served, prompt="hi", max_tokens=2, user="me", response_format={"type": "text"}, n=1, best_of=1)
    assert body["choices"][0]["logprobs"] is None


def test_echo_requests_under_parallel_equal_the_sequential_server(served, paths):
    srv, session = serve(paths, parallel=2)
    try:
        a, b = tokenize(served, "hello there"), tokenize(served, TEXT)
        body = {"prompt": [a, b], "echo": True, "max_tokens": 2, "logprobs": 2, "temperature": 0}
        assert completion(srv, **body)["choices"] == completion(served, **body)["choices"]
        one = {"prompt": TEXT, "max_tokens": 8, "logprobs": 2, "temperature": 0}  # the batched decoder's logprobs
        batched, alone = completion(srv, **one)["choices"][0], completion(served, **one)["choices"][0]
        assert batched["logprobs"]["tokens"] == alone["logprobs"]["tokens"]
        np.testing.assert_allclose(batched["logprobs"]["token_logprobs"], alone["logprobs"]["token_logprobs"], atol=TOL)
    finally:
        srv.stop()
        session.close()


def test_streamed_completion_logprobs_and_list_prompts_without_echo(served):
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    whole = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=6, temperature=0, logprobs=2)
    chunks = list(client.completions.create(model=MODEL, prompt=TEXT, max_tokens=6, temperature=0, logprobs=2, stream=True))
    streamed = [lp for c in chunks if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.token_logprobs]
    np.testing.assert_allclose(streamed, whole.choices[0].logprobs.token_logprobs, atol=TOL)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    ids = tokenize(served, "general kenobi")
    both = completion(served, prompt=[TEXT, ids], max_tokens=5, temperature=0)
    assert both["choices"][0]["text"] == whole.choices[0].text[: len(both["choices"][0]["text"])]
    assert both["choices"][1]["text"] == completion(served, prompt=ids, max_tokens=5, temperature=0)["choices"][0]["text"]
    assert both["usage"]["completion_tokens"] == 10 and both["usage"]["prompt_tokens"] == len(tokenize(served, TEXT)) + len(ids)


def test_echo_waits_for_running_generations_under_parallel(paths):
    """Under --parallel an echo request runs once the batch drains, and the stream it waited for is intact."""
    import threading

    srv, session = serve(paths, parallel=2)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        alone = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=40, temperature=0).choices[0].text
        got: dict[str, str] = {}

        def stream() -> None:
            parts = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=40, temperature=0, stream=True)
            got["text"] = "".join(c.choices[0].text for c in parts if c.choices)

        t = threading.Thread(target=stream)
        t.start()
        echo = completion(srv, prompt=TEXT, echo=True, max_tokens=0, logprobs=1)
        t.join(60)
        assert got["text"] == alone and echo["choices"][0]["text"] == TEXT
    finally:
        srv.stop()
        session.close()


def test_several_prompts_share_the_batch_under_parallel(served, paths):
    """Without echo, the prompts of one request are sequences of the batch; each answer equals
    the sequential server's (prompt i draws from (seed, i)), and a bad prompt fails the request."""
    srv, session = serve(paths, parallel=3)
    try:
        ids = tokenize(served, "general kenobi")
        body = {"prompt": [TEXT, ids, "hello there"], "max_tokens": 6, "temperature": 0.9, "seed": 5, "logprobs": 1}
        batched, alone = completion(srv, **body), completion(served, **body)
        assert [c["text"] for c in batched["choices"]] == [c["text"] for c in alone["choices"]]
        assert [c["index"] for c in batched["choices"]] == [0, 1, 2]
        for b, a in zip(batched["choices"], alone["choices"]):
            np.testing.assert_allclose(b["logprobs"]["token_logprobs"], a["logprobs"]["token_logprobs"], atol=TOL)
        assert batched["usage"] == alone["usage"]
        too_long = post(srv, "/v1/completions", {"prompt": ["hi", [5] * N_CTX], "max_tokens": 2})
        assert too_long.status_code == 400, too_long.text
        assert completion(srv, prompt=["a b", "c d"], max_tokens=2)["usage"]["completion_tokens"] == 4  # still serving
    finally:
        srv.stop()
        session.close()

"""One scoring request's memory (issue 23 item 4): a request's log-probabilities are bounded
(positions x (1 + alternatives) <= MAX_LOGPROB_ENTRIES, refused with a 400 that says the limit,
before any work), its answer too (MAX_ANSWER_BYTES), and the answer is kept as compact JSON one
prompt at a time and sent in pieces. Before: 64 prompts of 1,024 ids with logprobs 20 raised the
server by 316 MiB and answered 29 MB; the documented maximum extrapolated to 5-7 GB."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from eft_local.engine.decoder import EftEngine
from eft_local.engine.session import Session
from eft_local.server import generation
from eft_local.server.request import MAX_LOGPROB_ENTRIES
from tests.server.conftest import GuardedServer


@pytest.fixture(scope="module")
def srv(family):
    session = Session(EftEngine.load(family.paths(), n_ctx=1100, n_threads=1))
    server = GuardedServer(session)
    yield server
    server.stop()
    session.close()


def ids(n_prompts: int, length: int) -> list[list[int]]:
    return [[(7 * i + j) % 400 + 5 for j in range(length)] for i in range(n_prompts)]


def completions(srv, **body) -> httpx.Response:
    return httpx.post(srv.url + "/v1/completions", json=body, timeout=300)


def assert_refused_with_the_limit(r: httpx.Response) -> None:
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    assert err["code"] == "too_many_logprobs" and err["param"] == "logprobs" and f"{MAX_LOGPROB_ENTRIES:,}" in err["message"]


def test_the_issue_example_is_refused_saying_the_limit(srv):
    r = completions(srv, prompt=ids(64, 1024), max_tokens=0, echo=True, logprobs=20)
    assert_refused_with_the_limit(r)
    assert "1,376,256" in r.json()["error"]["message"]  # what it asked for: 64 x 1,024 x 21
    assert srv.worker.completed == 0 or srv.worker.running is None  # refused at parse: nothing queued


def test_text_prompts_are_counted_once_tokenized_before_anything_is_scored(srv, monkeypatch):
    scored = []
    monkeypatch.setattr("eft_local.server.answers.score_tokens", lambda *a, **k: scored.append(1) or [])
    n = httpx.post(srv.url + "/tokenize", json={"prompt": "word " * 100}).json()["count"]
    text = "word " * (100 * 1000 // n)  # about 1,000 tokens
    r = completions(srv, prompt=[text] * 64, max_tokens=0, echo=True, logprobs=20)
    assert_refused_with_the_limit(r)
    assert scored == []


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": ["a story"] * 256, "max_tokens": 1000, "logprobs": 5},  # generated tokens' log-probabilities
        {"prompt": ids(30, 1000), "max_tokens": 1000, "echo": True, "logprobs": 20},  # echo and generation
        {"prompt": ids(1, 1000) * 60, "max_tokens": 0, "echo": True, "logprobs": 20},
    ],
    ids=["generated", "echo+generated", "echo"],
)
def test_every_way_to_ask_for_too_many_log_probabilities_is_refused(srv, body):
    assert_refused_with_the_limit(completions(srv, **body))


def test_at_the_limit_and_without_log_probabilities_requests_are_served(srv):
    r = completions(srv, prompt=ids(2, 1000), max_tokens=0, echo=True, logprobs=20)
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(r.content)
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1] and len(choices[1]["logprobs"]["top_logprobs"]) == 1000
    r = completions(srv, prompt=ids(64, 1000), max_tokens=0, echo=True)  # echo without logprobs: nothing to score
    assert r.status_code == 200 and all(c["logprobs"] is None and c["text"] for c in r.json()["choices"])
    r = completions(srv, prompt=["once", "upon"], max_tokens=3, logprobs=2, temperature=0)
    assert r.status_code == 200 and [len(c["logprobs"]["tokens"]) for c in r.json()["choices"]] == [3, 3]


def test_an_answer_beyond_its_size_limit_is_a_400_saying_it(srv, monkeypatch):
    monkeypatch.setattr(generation, "MAX_ANSWER_BYTES", 50_000)
    r = completions(srv, prompt=ids(4, 200), max_tokens=0, echo=True, logprobs=5)
    assert r.status_code == 400 and r.json()["error"]["code"] == "answer_too_large", r.text[:300]
    assert "larger than 0.0476837 MiB" in r.json()["error"]["message"]
    assert completions(srv, prompt="hi", max_tokens=2).status_code == 200


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.slow
def test_a_large_scoring_answer_costs_about_its_own_size_in_memory(srv):
    """24 prompts x 1,000 ids, logprobs 20 (~10 MiB of JSON): before, the server's peak grew by ~11x
    the answer (the log-probabilities of every prompt as Python objects, then the whole body); now
    the compact choices plus one prompt's objects (and this process also holds the client's copy)."""
    completions(srv, prompt="warm", max_tokens=2)
    base = peak = rss_mib()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        r = completions(srv, prompt=ids(24, 1000), max_tokens=0, echo=True, logprobs=20)
    finally:
        done.set()
        sampler.join()
    assert r.status_code == 200
    answer = len(r.content) / 2**20
    json.loads(r.content)
    assert peak - base < 2.5 * answer + 16, f"peak +{peak - base:.0f} MiB for a {answer:.1f} MiB answer"

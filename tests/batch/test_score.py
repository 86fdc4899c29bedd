"""`eft-local score` (issue 16 §3): rows, error rows, grid, overrides, and rows == the server's echo."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from eft_local.engine.decoder import EftEngine
from eft_local.engine.session import Session
from eft_local.server.app import ServerOptions, create_app
from tests.conftest import ServerThread, role_args, run_cli, server_settings
from tests.engine.test_scoring import TOL

ROWS = [
    {"id": "sky", "prompt": "The sky is", "continuations": [" blue", " made of cheese"]},
    {"id": "one", "prompt": "Two plus two is", "continuation": " four", "beta": 0.5},
    {"id": "chat", "messages": [{"role": "user", "content": "hello"}], "continuations": ["hi there"]},
    {"id": "bad", "prompt": "no continuations here"},
    {"id": "weights", "prompt": "x", "continuations": ["y"], "weights": {"nope": 1}},
    {"id": "http-only", "prompt": "x", "continuations": ["y"], "logprobs": 3},
]


def score(family, tmp_path, *extra: str, rows=ROWS) -> tuple[list[dict], str]:
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    proc = run_cli("score", *role_args(family), "--n-ctx", "512", "--prompt-file", str(src), "--output", str(out), *extra)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in out.read_text().splitlines()], proc.stderr


@pytest.fixture(scope="module")
def served(family):
    engine = EftEngine.load(family.paths(), n_ctx=512, n_threads=1)
    session = Session(engine)
    srv = ServerThread(create_app(session, ServerOptions(model_name="m", settings=server_settings(alpha=0.7, beta=1.4))))
    yield srv
    srv.stop()
    session.close()


def echo(srv, text: str, **fields) -> list[float]:
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": text, "echo": True, "max_tokens": 0, "logprobs": 0, **fields})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["logprobs"]["token_logprobs"]


def test_score_rows_equal_the_server_echo(family, tmp_path, served):
    rows, stderr = score(family, tmp_path, "--alpha", "0.7", "--beta", "1.4")
    assert [r["id"] for r in rows] == [r["id"] for r in ROWS]
    by_id = {r["id"]: r for r in rows}
    assert "continuations" in by_id["bad"]["error"] and "nope" in by_id["weights"]["error"]
    assert by_id["http-only"]["error"] == "line 6: logprobs is a field of HTTP requests (eft-local serve), not of prompt rows"
    assert "6 rows" in stderr and "3 error row(s)" in stderr
    sky = by_id["sky"]
    assert (sky["alpha"], sky["beta"], sky["weights"]) == (0.7, 1.4, {})
    for src, row in (("The sky is", sky), ("Two plus two is", by_id["one"])):
        extra = {"beta": 0.5} if row["id"] == "one" else {}
        assert row["beta"] == extra.get("beta", 1.4)
        for cont in row["continuations"]:
            server = echo(served, src + cont["text"], **extra)
            np.testing.assert_allclose(cont["token_logprobs"], server[-cont["n_tokens"] :], atol=TOL)
            assert cont["logprob"] == pytest.approx(sum(cont["token_logprobs"]))
            assert len(cont["token_ids"]) == cont["n_tokens"] > 0 and isinstance(cont["is_greedy"], bool)
    chat = by_id["chat"]["continuations"][0]
    assert chat["n_tokens"] > 0 and chat["logprob"] < 0


def test_score_grid_sweeps_beta(family, tmp_path):
    # an interrupted score run's leftovers are ours to overwrite
    (tmp_path / "out.jsonl.partial").write_text(json.dumps({"id": "sky", "continuations": []}) + "\n")
    rows, _ = score(family, tmp_path, "--grid", "beta=0.5,1.5", "--grid", "temperature=0.1,1", rows=ROWS[:1])
    assert [(r["beta"], r["temperature"]) for r in rows] == [(0.5, 0.1), (0.5, 1.0), (1.5, 0.1), (1.5, 1.0)]
    # log-probabilities are at T = 1 with no filters: the temperature does not change them
    assert rows[0]["continuations"] == rows[1]["continuations"] and rows[0]["continuations"] != rows[2]["continuations"]


def test_score_bad_files_are_one_line(family, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    proc = run_cli("score", *role_args(family), "--prompt-file", str(bad))
    assert proc.returncode == 2 and "line 1: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("score", *role_args(family), "--prompt-file", str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 2 and "not found" in proc.stderr

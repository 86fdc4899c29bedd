"""lm-evaluation-harness itself against `eft-local serve` (issue 16 §5): a local JSON
multiple-choice task through ``local-completions`` with ``tokenizer_backend=remote`` and
``--batch_size 2``, offline. Skipped without the ``eval`` extra (``pip install -e .[eval]``).

Each log-likelihood lm-eval reports must equal the EFT log-probability of that continuation
computed by ``engine.scoring`` on a separate engine, and the accuracy must follow from them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ServerThread, server_settings

pytest.importorskip("lm_eval")

from eft_local.engine.decoder import EftEngine
from eft_local.engine.scoring import score_continuations
from eft_local.engine.session import Session
from eft_local.mix.params import SamplingParams
from eft_local.server.app import ServerOptions, create_app
from tests.engine.test_scoring import TOL

MODEL = "eft-eval"
QUESTIONS = [
    {"question": "The sky is", "choices": ["blue", "green", "loud"], "answer": 0},
    {"question": "Two plus two is", "choices": ["four", "five"], "answer": 0},
    {"question": "Water freezes at zero", "choices": ["degrees", "apples", "kings", "tides"], "answer": 0},
    {"question": "A cat says", "choices": ["meow", "woof"], "answer": 0},
    {"question": "The opposite of hot is", "choices": ["warm", "cold", "red"], "answer": 1},
]
TASK = """task: eft_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def served(family):
    engine = EftEngine.load(family.paths(), n_ctx=512, n_threads=1)
    session = Session(engine)
    variants = {"beta-1.5": {"beta": 1.5}}
    srv = ServerThread(
        create_app(session, ServerOptions(model_name=MODEL, settings=server_settings(alpha=0.8), variants=variants))
    )
    yield srv
    srv.stop()
    session.close()


def run_lm_eval(srv: ServerThread, model: str, tmp: Path) -> list[dict]:
    data = tmp / "mc.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (tmp / "task.yaml").write_text(TASK.format(data=data))
    out = tmp / "out"
    args = ",".join(
        [
            f"model={model}",
            f"base_url={srv.url}/v1/completions",
            "tokenizer_backend=remote",
            "tokenized_requests=True",
            "num_concurrent=1",
            "max_retries=1",
        ]
    )
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", args, "--tasks", "eft_local_mc"]
    cmd += ["--include_path", str(tmp), "--batch_size", "2", "--log_samples", "--output_path", str(out)]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"), "NO_PROXY": "127.0.0.1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = sorted(out.rglob("samples_eft_local_mc_*.jsonl"))
    assert samples, proc.stderr[-2000:]
    return [json.loads(line) for line in samples[-1].read_text().splitlines()]


def expected(engine: EftEngine, question: dict, params: SamplingParams) -> list[float]:
    """Σ log p_EFT of each choice after the question, as lm-eval encodes the pair (" " + choice, no BOS: it tokenizes with add_special_tokens false)."""
    chat = engine.chat
    context = chat.tokenize(question["question"], add_bos=False, special=True)
    conts = []
    for choice in question["choices"]:
        whole = chat.tokenize(question["question"] + " " + choice, add_bos=False, special=True)
        assert whole[: len(context)] == context
        conts.append(whole[len(context) :])
    engine.reset()
    rows = score_continuations(engine, {n: context for n in engine.models}, conts, params)
    return [sum(t.logprob for t in row) for row in rows]


@pytest.mark.parametrize("model,beta", [(MODEL, 1.0), ("beta-1.5", 1.5)])
def test_lm_eval_multiple_choice_equals_eft_scoring(served, family, tmp_path, model, beta):
    samples = run_lm_eval(served, model, tmp_path)
    assert len(samples) == len(QUESTIONS)
    engine = EftEngine.load(family.paths(), n_ctx=512, n_threads=1)
    try:
        params = SamplingParams(alpha=0.8, beta=beta)
        for s in samples:
            q = QUESTIONS[s["doc_id"]]
            got = [float(r[0][0]) for r in s["resps"]]
            want = expected(engine, q, params)
            np.testing.assert_allclose(got, want, atol=TOL * 10)
            assert s["acc"] == float(int(np.argmax(got)) == q["answer"])
    finally:
        engine.close()


GEN_TASK = """task: eft_local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 12
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
"""


def test_lm_eval_generation_through_chat_completions_equals_run(served, family, tmp_path):
    from eft_local.batch.prompt_file import PromptItem
    from eft_local.batch.run import BatchOptions, run_one

    docs = [{"question": "Say hello.", "answer": "hello"}, {"question": "Count to three.", "answer": "1 2 3"}]
    data = tmp_path / "gen.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "gen.yaml").write_text(GEN_TASK.format(data=data))
    out = tmp_path / "out"
    args = f"model={MODEL},base_url={served.url}/v1/chat/completions,num_concurrent=1,max_retries=1"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-chat-completions", "--model_args", args]
    cmd += ["--tasks", "eft_local_gen", "--include_path", str(tmp_path), "--apply_chat_template", "--log_samples"]
    cmd += ["--output_path", str(out)]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = [
        json.loads(line) for f in sorted(out.rglob("samples_eft_local_gen_*.jsonl")) for line in f.read_text().splitlines()
    ]
    assert len(samples) == len(docs)
    engine = EftEngine.load(family.paths(), n_ctx=512, n_threads=1)
    try:
        for s in samples:
            q = docs[s["doc_id"]]["question"]
            messages = [{"role": "user", "content": q}]
            engine.reset()
            settings = {**server_settings(alpha=0.8), "max_tokens": 12, "temperature": 0.0, "stop": ("\n\n",)}
            row, _ = run_one(engine, PromptItem(0, messages, messages=messages), 0, BatchOptions(settings=settings))
            assert s["resps"][0][0] == row["text"]
    finally:
        engine.close()

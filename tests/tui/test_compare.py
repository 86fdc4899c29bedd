"""Compare's finish reasons: Esc as the last token decodes still says length."""

from __future__ import annotations

import pytest


# -- Esc after a compare column hit max tokens: "length", not "stopped" --------------------------------------
@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    from eft_local.engine.decoder import EftEngine
    from eft_local.llama.synthetic import write_family

    family = write_family(tmp_path_factory.mktemp("robust-family"))
    engine = EftEngine.load(family.paths(), n_ctx=256, n_threads=1)
    yield engine
    engine.close()


@pytest.mark.parametrize("draft_tokens", [0, None, 3])
def test_stop_pressed_while_the_last_token_decodes_still_says_length(tiny_engine, draft_tokens):
    """Esc lands while the model computes the answer's last token: the answer is complete."""
    import numpy as np

    from eft_local.engine.config import GenerationConfig
    from eft_local.engine.events import FinishedEvent, TokenEvent
    from eft_local.engine.session import Session

    max_tokens = 6
    prompt, _ = Session(tiny_engine).fit([{"role": "user", "content": "hello there"}], max_tokens)
    config = GenerationConfig(max_tokens=max_tokens, draft_tokens=draft_tokens)
    seen, stop = 0, [False]
    for event in tiny_engine.generate(prompt, config, np.random.default_rng(0), cancel=lambda: stop[0]):
        if isinstance(event, TokenEvent):
            seen += 1
            stop[0] = seen >= max_tokens - 1  # Esc before the last token is out
        elif isinstance(event, FinishedEvent):
            result = event
    assert result.stats.n_tokens == max_tokens  # it did reach the limit (no end-of-generation token)
    assert result.reason == "length"

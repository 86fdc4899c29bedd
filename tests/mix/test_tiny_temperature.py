"""Issue 15 item 9: every finite positive temperature means the same in every front end: it
reaches the engine unchanged (no front end turns it into greedy) and samples without
overflow (tests/mix/test_distribution.py, tests/engine/test_decoder.py: the greedy limit)."""

from __future__ import annotations

import pytest

from eft_local.engine.config import effective_settings, generation_config
from eft_local.server.request import parse
from eft_local.settings import SETTINGS, defaults

TINY = [1e-40, 5e-324, 1e-38, 1e-4]


@pytest.mark.parametrize("temperature", TINY)
def test_the_schema_accepts_every_finite_positive_temperature(temperature):
    assert SETTINGS["temperature"].check(temperature) == temperature


@pytest.mark.parametrize("temperature", TINY)
def test_an_http_request_keeps_a_tiny_temperature(temperature):
    req = parse("completion", {"prompt": "hi", "temperature": temperature}, defaults(), n_ctx=512)
    assert req.config.sampling.temperature == temperature


@pytest.mark.parametrize("temperature", TINY)
def test_a_row_keeps_a_tiny_temperature(temperature):
    config = generation_config(effective_settings(defaults(), {"temperature": temperature}))
    assert config.sampling.temperature == temperature

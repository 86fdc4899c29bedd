"""``GenerationConfig`` checks its own fields when built (the settings among them by their one
definition), so a library caller gets a ``ValueError``/``TypeError`` naming the field, never an
IndexError or a silent nonsense run."""

from __future__ import annotations

import math

import pytest

from eft_local import GenerationConfig, SamplingParams, UserError


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_tokens", 0),
        ("max_tokens", 2**24 + 1),
        ("draft_tokens", -1),
        ("draft_tokens", 65),
        ("logprobs", 21),
        ("logprobs", -1),
        ("stop", [""]),
        ("stats_interval", -1.0),
        ("stats_interval", math.nan),
    ],
)
def test_a_bad_value_is_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field) as e:
        GenerationConfig(**{field: value})
    assert isinstance(e.value, UserError)


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_tokens", 10.0),
        ("max_tokens", "10"),
        ("max_tokens", True),
        ("max_tokens", None),
        ("draft_tokens", 4.0),
        ("stop", [1]),
        ("stop", 5),
        ("trace", 1),
        ("draft_with", 3),
        ("sampling", {"temperature": 0.7}),
        ("stats_interval", "1"),
    ],
)
def test_a_value_of_the_wrong_type_is_a_type_error_naming_the_field(field, value):
    with pytest.raises(TypeError, match=field):
        GenerationConfig(**{field: value})


def test_good_values_stand():
    cfg = GenerationConfig(SamplingParams(temperature=0.0), max_tokens=2**24, draft_tokens=None, stop="###", logprobs=0)
    assert cfg.stop == ("###",) and cfg.max_tokens == 2**24 and cfg.draft_tokens is None
    assert GenerationConfig(draft_tokens=0, stop=["a", "b"], stats_interval=0).stop == ("a", "b")

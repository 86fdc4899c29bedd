"""``SamplingParams`` checks its own values when built, by the settings' one definition: the
library path refuses what the command line refuses, with ``ValueError``/``TypeError`` naming
the field."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from eft_local import SamplingParams, UserError
from eft_local.settings import MAX_WEIGHT, SETTINGS


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", -1),
        ("temperature", 101.0),
        ("temperature", math.nan),
        ("alpha", math.inf),
        ("alpha", -math.inf),
        ("beta", MAX_WEIGHT * 2),
        ("top_p", 0),
        ("top_p", 0.0),
        ("top_p", math.nan),
        ("top_p", 1.5),
        ("min_p", 1.0),
        ("min_p", -0.1),
        ("typical_p", 0.0),
        ("top_k", -1),
        ("top_k", 2**31),
        ("top_p_mode", "nucleus"),
    ],
)
def test_a_bad_value_is_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field) as e:
        SamplingParams(**{field: value})
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)  # a front end prints it as one line


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", True),
        ("temperature", "0.7"),
        ("alpha", None),
        ("alpha", "1"),
        ("top_k", 2.0),
        ("top_k", "5"),
        ("top_k", False),
        ("top_p", [0.9]),
        ("top_p_mode", 1),
        ("weights", [("safe", 1.0)]),
        ("weights", {"safe": "0.5"}),
        ("weights", {1: 0.5}),
    ],
)
def test_a_value_of_the_wrong_type_is_a_type_error_naming_the_field(field, value):
    with pytest.raises(TypeError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize("value", [math.nan, math.inf, MAX_WEIGHT + 1])
def test_delta_weights_are_checked_like_alpha(value):
    with pytest.raises(ValueError, match=r"weights\.safe"):
        SamplingParams(weights={"safe": value})


def test_good_values_stand_and_numpy_numbers_are_numbers():
    p = SamplingParams(alpha=np.float32(1.5), beta=2, temperature=np.float64(0.5), top_k=np.int64(40), weights={"safe": -1})
    assert (p.alpha, p.beta, p.temperature, p.top_k, p.weights) == (1.5, 2.0, 0.5, 40, {"safe": -1.0})
    assert type(p.beta) is float and type(p.top_k) is int
    assert SamplingParams() == SamplingParams(**{f: SETTINGS[f].default for f in ("alpha", "beta", "temperature", "top_p")})


def test_replace_checks_too():
    with pytest.raises(ValueError, match="top_p"):
        replace(SamplingParams(), top_p=0.0)
    assert replace(SamplingParams(), top_p=1.0).top_p == 1.0


def test_the_bounds_are_the_settings_bounds():
    """One definition: moving a bound in settings moves the library's check with it."""
    for name in ("temperature", "top_p", "min_p", "typical_p", "top_k", "alpha"):
        s = SETTINGS[name]
        if s.hi is not None and not s.hi_open:
            SamplingParams(**{name: s.type(s.hi)})  # the bound itself is allowed
        if s.lo is not None and s.lo_open:
            with pytest.raises(ValueError):
                SamplingParams(**{name: s.type(s.lo)})

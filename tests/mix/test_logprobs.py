"""log-softmax at T = 1 (scoring, echo, generated-token logprobs): the unshifted fast path and
the shifted one agree with a float64 reference wherever the maximum lies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eft_local.mix.logprobs import log_normalizer, token_logprobs


def reference_logprobs(z: np.ndarray) -> np.ndarray:
    x = z.astype(np.float64)
    m = x.max()
    return x - (m + math.log(np.exp(x - m).sum()))


@pytest.mark.parametrize("offset", [-500.0, -25.0, -19.0, 0.0, 30.0, 59.0, 61.0, 300.0])
def test_log_normalizer_matches_float64_at_any_offset(offset):
    rng = np.random.default_rng(3)
    z = (rng.standard_normal(151_936) * 2.5 + offset).astype(np.float32)
    z[:5] += np.float32(15.0)
    z[-100:] = -np.inf  # masked padding ids
    want = reference_logprobs(z)
    lse = log_normalizer(z, float(z.max()))
    assert abs((float(z[0]) - lse) - want[0]) < 1e-5
    got = token_logprobs(z, 7, k=1)
    assert got.logprob == pytest.approx(want[7], abs=1e-5)
    assert got.top[0][0] == int(np.argmax(z)) and got.top[0][1] == pytest.approx(want.max(), abs=1e-5)


def test_top_one_is_the_first_of_tied_maxima_and_marks_greedy():
    z = np.zeros(1000, np.float32)
    z[[10, 20]] = 5.0
    lp = token_logprobs(z, 10, k=1)
    assert lp.top[0][0] == 10 and lp.is_greedy and lp.top[0][1] == lp.logprob
    assert not token_logprobs(z, 11, k=1).is_greedy

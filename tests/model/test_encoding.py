"""Differential encoding, delay pairs and n-bit delay quantisation."""

from __future__ import annotations

import numpy as np
import pytest

from testbed.errors import ModelError
from testbed.model.encoding import (Constants, decode, delay_step, delays, encode, quantise_delay,
                                    quantise_weight)


def test_encode_is_differential_around_t0():
    t_plus, t_minus = encode(np.array([0.0, 1.0, -2.5]), 3.0)
    np.testing.assert_array_equal(t_plus, [3.0, 4.0, 0.5])
    np.testing.assert_array_equal(t_minus, [3.0, 2.0, 5.5])


def test_encode_decode_round_trip_inside_range():
    x = np.random.default_rng(0).uniform(-2.999, 2.999, (50, 7))
    np.testing.assert_allclose(decode(*encode(x, 3.0)), x, rtol=0, atol=1e-12)


def test_encode_clips_at_zero_outside_range():
    t_plus, t_minus = encode(np.array([5.0, -4.0]), 3.0)
    np.testing.assert_array_equal(t_plus, [8.0, 0.0])
    np.testing.assert_array_equal(t_minus, [0.0, 7.0])
    assert decode(t_plus, t_minus)[0] == 4.0  # clipped: (8 − 0)/2, not 5


def test_delays_are_mirror_images():
    w = np.random.default_rng(1).normal(0, 4, (30, 20))  # many beyond the clamp ±c
    d_plus, d_minus = delays(w, 3.0)
    np.testing.assert_allclose(d_plus + d_minus, 6.0, rtol=0, atol=1e-12)
    assert d_plus.min() >= 0 and d_plus.max() <= 6.0
    np.testing.assert_allclose(d_plus, np.clip(w, -3, 3) + 3, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_quantised_delays_use_2n_levels_and_mirror(bits):
    c = 3.0
    w = np.random.default_rng(bits).uniform(-4, 4, 5000)
    d_plus, d_minus = delays(w, c, bits)
    step = 2 * c / (2**bits - 1)
    assert delay_step(c, bits) == pytest.approx(step)
    levels_plus = d_plus / step
    levels_minus = d_minus / step
    np.testing.assert_allclose(levels_plus, np.rint(levels_plus), atol=1e-9)   # d⁺ on the grid
    np.testing.assert_allclose(levels_minus, np.rint(levels_minus), atol=1e-9)  # d⁻ on the grid too
    assert sorted(set(np.rint(levels_plus).astype(int).tolist())) == list(range(2**bits))  # all 2ⁿ levels used
    np.testing.assert_allclose(d_plus + d_minus, 2 * c, atol=1e-12)
    assert d_plus.min() == 0.0 and d_plus.max() == pytest.approx(2 * c)


def test_quantise_rounds_to_nearest_level():
    # 2 bits over [0, 6]: levels 0, 2, 4, 6
    np.testing.assert_allclose(quantise_delay(np.array([0.9, 1.1, 4.9, 5.1, 6.0]), 3.0, 2), [0, 2, 4, 6, 6])


def test_quantise_weight_is_quantised_delay_minus_c():
    w = np.array([-3.5, -1.2, 0.0, 0.4, 2.9])
    np.testing.assert_allclose(quantise_weight(w, 3.0, 3), delays(w, 3.0, 3)[0] - 3.0)


@pytest.mark.parametrize("bits", [0, 17, 2.5, "4"])
def test_bad_bits(bits):
    with pytest.raises(ModelError, match="bits must be an integer in 1..16"):
        delay_step(3.0, bits)


@pytest.mark.parametrize("field,value", [("t0", 0.0), ("c", -1.0), ("s", float("nan")), ("t0", "3"),
                                         ("c", float("inf"))])
def test_bad_constants(field, value):
    with pytest.raises(ModelError, match=f"constant {field} must be a finite number > 0"):
        Constants(**{field: value})


def test_default_constants_are_the_reference_ones():
    assert Constants() == Constants(t0=3.0, c=3.0, s=10.0)

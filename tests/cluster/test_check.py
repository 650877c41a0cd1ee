"""pi2 doctor --cluster's verdicts: failed checks and a path too jittery for τ are refused, naming the fix."""

from __future__ import annotations

import pytest

from testbed.cluster.check import HostCheck, jitter_limit_us, refusals


def test_the_jitter_limit_is_a_4_sigma_difference_within_5_percent_of_tau():
    assert jitter_limit_us(10_000) == pytest.approx(500 / (4 * 2 ** 0.5))


def test_refusals_name_the_failed_check_and_the_tau_that_would_do():
    ok = HostCheck("e1", "198.19.0.2", {"ssh": True, "mnexec": True}, jitter_us=20.0)
    bad = HostCheck("server1", "10.0.0.2", {"ssh": True, "sudo -n": False}, {"sudo -n": "needs a password"},
                    jitter_us=300.0)
    assert refusals([ok], 10_000) == []
    lines = refusals([ok, bad], 10_000)
    assert lines[0] == "host server1: sudo -n failed (needs a password)"
    assert "path jitter 300.0 µs exceeds 88.4 µs" in lines[1] and "--tau ≥ 34 ms" in lines[1]
    assert refusals([bad], None) == lines[:1]  # without --tau only the checks count

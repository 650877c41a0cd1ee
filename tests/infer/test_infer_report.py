"""The report's warnings: what a run's figures say about a kernel that could not keep up."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from testbed.infer.report import LayerStats, kernel_warnings, kth_lateness_us

ON_TIME = LayerStats(layer=0, spikes_expected=100, spikes_received=100, ports_short=0, error_us_mean=40.0,
                     error_us_median=35.0, error_us_sd=50.0, error_us_p99=300.0, inject_late_us_median=5.0,
                     inject_late_us_p99=60.0, kth_late_us_p99=400.0, kth_late_us_max=900.0)


def test_a_run_on_time_has_no_warnings():
    assert kernel_warnings((ON_TIME, replace(ON_TIME, layer=1)), tau_us=6000.0, loss=0.0) == ()


def test_missing_spikes_and_late_arrivals_are_named_with_the_fix():
    short = replace(ON_TIME, layer=1, spikes_received=60, ports_short=12, error_us_median=-700.0)
    warnings = kernel_warnings((ON_TIME, short), tau_us=6000.0, loss=0.0)
    assert warnings == ("layer 1: 40 of 100 spikes the neurons should have counted never arrived in time "
                        "(12 sample-ports got fewer than K)",
                        "layer 1: neuron events come a median -700 µs off the plan, 0.12 τ",
                        "the kernel could not keep up with this τ: use a larger --tau")


def test_with_loss_missing_spikes_are_expected():
    short = replace(ON_TIME, spikes_received=60, ports_short=12)
    assert kernel_warnings((short,), tau_us=6000.0, loss=0.1) == ()


def test_k_th_lateness_is_against_the_simulated_k_th_arrival_of_ports_that_counted_k():
    passed = np.array([[[10.0, 30.0], [5.0, np.nan]], [[1.0, 2.0], [3.0, 4.0]]])  # (samples, ports, K=2)
    kth = np.array([[35.0, 9.0], [np.nan, 4.5]])  # sample 1 port 0: short of K in the kernel
    assert kth_lateness_us(passed, kth).tolist() == [5.0, 0.5]  # sample 0 port 1: short of K in the simulation

"""From gated arrivals to a neuron's output time: the one rule the simulator and the relay share.

A port's gate passes its K earliest spikes; the relay averages their times (model units from
the layer's base time). Spikes that missed the layer's deadline never reach the relay: a port
averages the ones it got, and a port that got none reports the deadline itself (its time-out).
"""

from __future__ import annotations

import numpy as np


def readout(passed: np.ndarray, deadline: float) -> np.ndarray:
    """T per port from passed arrival times (..., K) with nan for missing ones."""
    got = np.isfinite(passed)
    count = got.sum(axis=-1)
    total = np.where(got, passed, 0.0).sum(axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), deadline)

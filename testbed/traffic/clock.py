"""Relating the injector's clock to the kernel's packet timestamps.

Kernel software timestamps (SO_TIMESTAMPNS on receive, SO_TIMESTAMPING on transmit) read
CLOCK_REALTIME (ktime_get_real). The injector paces on CLOCK_MONOTONIC, which NTP can slew but
never step. Sampling both clocks together gives the offset that maps one onto the other; it holds
while nobody steps the wall clock, so sample it once per run, right before injecting.
"""

from __future__ import annotations

import time

_PAIRS = 5  # reads; the tightest bracket wins


def realtime_minus_monotonic_ns() -> int:
    """CLOCK_REALTIME − CLOCK_MONOTONIC in ns, from the tightest of a few bracketed reads.

    Each read is realtime, monotonic, realtime; the monotonic read is paired with the midpoint
    of the two realtime reads, so the error is at most half the bracket (typically < 100 ns).
    """
    best_width, best_offset = None, 0
    for _ in range(_PAIRS):
        before = time.clock_gettime_ns(time.CLOCK_REALTIME)
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        after = time.clock_gettime_ns(time.CLOCK_REALTIME)
        width = after - before
        if best_width is None or width < best_width:
            best_width, best_offset = width, (before + after) // 2 - mono
    return best_offset

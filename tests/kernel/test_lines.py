"""The shared-line programs' verdicts in the kernel (BPF_PROG_TEST_RUN): what each leaves alone, what it
drops, and how its map bounds it. That a line's copies reach exactly its members on a live fabric is
tests/fabric/test_shared_lines.py's."""

from __future__ import annotations

import pytest

from testbed.errors import KernelError
from testbed.kernel import bpf
from testbed.kernel.lines import build_line_fanout, build_line_splitter, load_line_fanout, load_line_splitter
from testbed.plan import wire
from testbed.plan.wire import KIND_EVENT, KIND_PRIMER, KIND_SPIKE, SpikeHeader
from testbed.traffic.packets import spike_frame

PASS, DROP = bpf.TC_ACT_UNSPEC, bpf.TC_ACT_SHOT
EVENTS, LINES = 8, 3  # a layer of 4 inputs; at most 3 lines per event


def frame(layer: int = 0, source: int = 1, sign: int = 0, kind: int = KIND_SPIKE, line: int = 0,
          size: int = wire.SPIKE_FRAME_BYTES) -> bytes:
    header = SpikeHeader(layer, source, sign, 9, 0, kind, 1, line)
    return spike_frame("02:00:00:00:00:01", "ff:ff:ff:ff:ff:ff", "198.18.0.1", "198.18.0.255", header, size)


def verdict(program_fd: int, data: bytes) -> int:
    return bpf.prog_test_run(program_fd, data).retval


@pytest.mark.root
@pytest.mark.parametrize("data, expected", [
    (frame(layer=1), PASS),  # another layer's spike
    (frame(kind=KIND_EVENT), PASS),  # a neuron event is no spike to split
    (frame(source=4), PASS),  # event 8: beyond the layer's events
    (frame()[:40], PASS),  # not even a UDP header
    (frame(), DROP),  # event 2 has no line: nothing sent, the original dropped
    (frame(kind=KIND_PRIMER, size=1514), DROP),
])
def test_splitter_verdicts(data, expected):
    splitter = load_line_splitter(0, EVENTS, LINES, {5: [0x10001]}, "p2tsplit")
    try:
        assert verdict(splitter.fd, data) == expected
    finally:
        splitter.close()


@pytest.mark.root
@pytest.mark.parametrize("data, expected", [
    (frame(layer=1, line=1), PASS),
    (frame(kind=KIND_EVENT, line=1), PASS),
    (frame(kind=KIND_PRIMER, line=1, size=1514), DROP),  # a primer's work ends with its line's delay
    (frame(line=0), DROP),  # a spike that came down no line
    (frame(line=LINES + 1), DROP),  # beyond the layer's widest event
    (frame(line=2), DROP),  # a line with no members: the copy ends here
])
def test_fanout_verdicts(data, expected):
    fanout = load_line_fanout(0, EVENTS, LINES, {2 * LINES + 0: [1]}, "p2tfan")
    try:
        assert verdict(fanout.fd, data) == expected
    finally:
        fanout.close()


def test_bad_widths_are_refused_before_the_kernel_sees_them():
    with pytest.raises(KernelError, match="lines per event"):
        build_line_splitter(0, EVENTS, 0, map_fd=3)
    with pytest.raises(KernelError, match="members"):
        build_line_fanout(0, EVENTS, LINES, 513, map_fd=3)

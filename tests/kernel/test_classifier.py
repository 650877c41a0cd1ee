"""The synapse classifier program, run by the kernel on real frames (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import os

import pytest

from testbed.errors import KernelError
from testbed.kernel import bpf
from testbed.kernel.classifier import SynapseFilter, build_synapse_classifier, load_synapse_classifier
from testbed.plan.compiler import synapse_classid
from testbed.plan.wire import KIND_PRIMER, SPIKE_FRAME_BYTES, SpikeHeader
from testbed.traffic.packets import spike_frame


def frame(layer: int, source: int, sign: int, kind: int = 0, size: int = SPIKE_FRAME_BYTES) -> bytes:
    return spike_frame("02:70:32:00:00:01", "ff:ff:ff:ff:ff:ff", "198.18.0.1", "198.18.0.255",
                       SpikeHeader(layer, source, sign, 7, 0, kind), size)


def test_layer_out_of_range_is_refused():
    with pytest.raises(KernelError, match="layer 300"):
        build_synapse_classifier(300)


@pytest.mark.root
@pytest.mark.parametrize("source, sign", [(0, 0), (0, 1), (5, 1), (300, 0), (4095, 1)])
def test_classid_matches_the_compiler(source, sign):
    fd = load_synapse_classifier(2, "p2_test_cls")
    try:
        for kind, size in ((0, SPIKE_FRAME_BYTES), (KIND_PRIMER, 1514)):
            got = bpf.prog_test_run(fd, frame(2, source, sign, kind, size)).retval & 0xFFFFFFFF
            major, minor = synapse_classid(source, sign).split(":")
            assert got == (int(major) << 16) | int(minor, 16)
    finally:
        os.close(fd)


@pytest.mark.root
def test_other_layers_and_non_spikes_match_nothing():
    fd = load_synapse_classifier(1, "p2_test_cls")
    try:
        assert bpf.prog_test_run(fd, frame(0, 3, 0)).retval == 0
        arp = bytes.fromhex("ffffffffffff027032000001" "0806") + bytes(46)
        assert bpf.prog_test_run(fd, arp).retval == 0
    finally:
        os.close(fd)


def test_filter_refuses_events_outside_the_port():
    with pytest.raises(KernelError, match="0..7"):
        SynapseFilter(0, 8, {8}, "p2_test_flt")


@pytest.mark.root
def test_filter_drops_exactly_the_pruned_events():
    dropped = {1, 4, 6}  # events 2·source + sign: (0, −), (2, +), (3, +)
    with SynapseFilter(3, 8, dropped, "p2_test_flt") as program:
        for source in range(4):
            for sign in (0, 1):
                for kind, size in ((0, SPIKE_FRAME_BYTES), (KIND_PRIMER, 1514)):
                    verdict = bpf.prog_test_run(program.fd, frame(3, source, sign, kind, size)).retval
                    assert verdict == (bpf.TC_ACT_SHOT if 2 * source + sign in dropped else bpf.TC_ACT_OK)
        # Other layers, events beyond the port's and non-spikes pass untouched.
        assert bpf.prog_test_run(program.fd, frame(2, 0, 1)).retval == bpf.TC_ACT_OK
        assert bpf.prog_test_run(program.fd, frame(3, 40, 0)).retval == bpf.TC_ACT_OK
        arp = bytes.fromhex("ffffffffffff027032000001" "0806") + bytes(46)
        assert bpf.prog_test_run(program.fd, arp).retval == bpf.TC_ACT_OK

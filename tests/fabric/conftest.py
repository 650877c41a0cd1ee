"""A tiny compiled plan and helpers that push real primer + spike frames through a built fabric.

The tiny plans keep a delay class per synapse (`delay_lines="per-synapse"`): the tests that use them
check that data path's objects (bridge, per-port classes, synapse filters); tests/fabric/
test_shared_lines.py checks shared delay lines, and the tests that compile their own plans run both."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from testbed.kernel import netns
from testbed.kernel.names import REGISTRY_DIR, REGISTRY_SUFFIX
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.plan.fabric_plan import FabricPlan
from testbed.plan.profiles import load_profile
from testbed.plan.wire import KIND_PRIMER, KIND_SPIKE, SpikeHeader
from testbed.traffic.capture import Capture, Receiver
from testbed.traffic.inject import Injector, Schedule, SendReport
from testbed.traffic.packets import spike_frame

TAU_US = 1000.0
# 3 inputs × 2 neurons. Port delays are c ± w (c = 3): every port's six delays are 0.5, 1.5, ... 5.5 ms,
# 1 ms apart, so the order of arrivals can be checked without any timing tolerance below 1 ms.
WEIGHTS = np.array([[0.5, -1.5], [1.5, 2.5], [2.5, 0.5]])
SRC_MAC, BROADCAST = "02:00:00:00:00:01", "ff:ff:ff:ff:ff:ff"


@pytest.fixture(scope="session")
def tiny_plan() -> FabricPlan:
    net = Pi2Network((DenseLayer(WEIGHTS, 1),), (3,))
    return compile_network(net, Realisation.from_profile(load_profile("shaper")), TAU_US, np.zeros((1, 3)),
                           prune_margin=None, lead=0.0, delay_lines="per-synapse")


@pytest.fixture(scope="session")
def wide_tiny_plan() -> FabricPlan:
    """The tiny plan at τ = 4 ms: its delays are 2 … 22 ms, 4 ms apart, so an order check has 4 ms of
    slack, more than a shared machine's scheduling delays (1 ms was not, under load)."""
    net = Pi2Network((DenseLayer(WEIGHTS, 1),), (3,))
    return compile_network(net, Realisation.from_profile(load_profile("shaper")), 4 * TAU_US, np.zeros((1, 3)),
                           prune_margin=None, lead=0.0, delay_lines="per-synapse")


@pytest.fixture(scope="session")
def pruned_tiny_plan() -> FabricPlan:
    """The tiny plan pruned on all-zero calibration inputs with margin 0: each port keeps only its
    earliest synapse, the synapse filter drops the other five events."""
    net = Pi2Network((DenseLayer(WEIGHTS, 1),), (3,))
    return compile_network(net, Realisation.from_profile(load_profile("shaper")), TAU_US, np.zeros((1, 3)),
                           prune_margin=0.0, lead=0.0, delay_lines="per-synapse")


def event_frames(plan: FabricPlan, sample: int, events: list[tuple[int, int]], seq0: int = 0,
                 origin_ns: int | None = None) -> list[bytes]:
    """Primer then spike for each (source, sign) event of layer 0, in order; spikes carry the
    sample's origin `origin_ns` (CLOCK_REALTIME; default an hour from now, so that every arrival
    is early and never late: the neurons count and sum whatever comes first)."""
    if origin_ns is None:
        origin_ns = time.clock_gettime_ns(time.CLOCK_REALTIME) + 3600 * 10**9
    frames = []
    for n, (source, sign) in enumerate(events):
        for kind, size in ((KIND_PRIMER, plan.packets.primer_bytes), (KIND_SPIKE, plan.packets.spike_bytes)):
            header = SpikeHeader(layer=0, source=source, sign=sign, sample=sample, seq=seq0 + n, kind=kind,
                                 time_ns=origin_ns if kind == KIND_SPIKE else 0)
            frames.append(spike_frame(SRC_MAC, BROADCAST, "10.0.0.1", "10.0.0.255", header, size))
    return frames


def inject(host_netns: str, inject_if: str, schedule: Schedule, expected_spikes: int,
           wait_s: float = 1.0) -> tuple[SendReport, Capture]:
    """Send `schedule` into `inject_if`; read what reaches the host namespace with kernel RX stamps."""
    with Receiver.open(host_netns) as receiver, Injector.open(inject_if, host_netns) as injector:
        receiver.discard()
        report = injector.send(schedule)
        capture = receiver.collect(time.monotonic_ns() + int(wait_s * 1e9), expected_spikes=expected_spikes)
        # Whatever else arrives (it must not: K per port) shows up in a short second read.
        extra = receiver.collect(time.monotonic_ns() + 50_000_000)
    arrivals = np.concatenate([capture.arrivals, extra.arrivals])
    return report, Capture(arrivals, None, capture.dropped + extra.dropped, capture.others + extra.others)


def one_event_per_sample(fab: Any, plan: FabricPlan, events: list[tuple[int, int]], origin_ns: int,
                         first_sample: int = 300) -> dict[tuple[tuple[int, int], int], tuple[int, int]]:
    """Send each (source, sign) event of layer 0 as a sample of its own (sample first_sample + n,
    10 ms after the one before) and read each port's neuron state of that sample back:
    {(event, port index): (spikes counted, their kernel stamps' sum − the spike's TX stamp, ns)}."""
    pairs = []
    for n, event in enumerate(events):
        pairs += [(10_000_000 * n, f) for f in event_frames(plan, first_sample + n, [event], seq0=n, origin_ns=origin_ns)]
    report, _ = inject(fab.host_netns, fab.inject_ifs[0], Schedule.from_pairs(pairs), 0, wait_s=0.1)
    states = {}
    for n, event in enumerate(events):
        tx = int(report.tx_real_ns[2 * n + 1])  # primer, then spike, per sample
        for q, live in enumerate(fab.ports[0]):
            state = live.gate.partial(first_sample + n)
            states[(event, q)] = (state.count, state.sum_ns + origin_ns - tx)
    return states


def leftovers(run_id: str) -> list[str]:
    """Every trace of run `run_id` still in the kernel or on disk."""
    tag = f"p2{run_id}"
    found = [n for n in netns.list_names() if n.startswith(tag)]
    found += [name for _, name in socket.if_nameindex() if name.startswith(tag)]
    if (REGISTRY_DIR / f"{run_id}{REGISTRY_SUFFIX}").exists():
        found.append(str(REGISTRY_DIR / f"{run_id}{REGISTRY_SUFFIX}"))
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if f"mininet:{tag}".encode() in cmdline and int(proc.name) != os.getpid():
                found.append(f"process {proc.name}")
    return found


@pytest.fixture
def spikes() -> SimpleNamespace:
    """The helpers above, for tests (a fixture: test modules cannot import a conftest by name)."""
    return SimpleNamespace(event_frames=event_frames, inject=inject, one_event_per_sample=one_event_per_sample,
                           leftovers=leftovers)

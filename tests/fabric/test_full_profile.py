"""The `full` profile built for real by both backends: netem delay classes, the eBPF first-K gate, and the
gact random drop in front of the gate that `pi2 compile --loss` asks for.

The host kernel of this project has neither sch_netem nor act_gact, so these tests skip there (the build's
KernelError names the missing module) and run in the user-mode-linux guest (tests/kernel/test_guest_suite.py).
The plan is conftest's 3 inputs × 2 neurons, K = 1; every sample carries one event, input 0's t⁺, so every
port receives exactly one spike per sample and passes it unless the kernel dropped it.
"""

from __future__ import annotations

import importlib.util
import shutil
import time

import numpy as np
import pytest

from testbed.errors import KernelError
from testbed.fabric.live import build_fabric
from testbed.kernel import netns
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.plan.fabric_plan import FabricPlan
from testbed.plan.profiles import load_profile
from testbed.plan.tc import drop_probability
from testbed.plan.wire import KIND_SPIKE, SpikeHeader
from testbed.traffic.inject import Schedule
from testbed.traffic.packets import spike_frame
from testbed.kernel.tc import parse_handle
from testbed.plan.tc import CLSACT_INGRESS

pytestmark = pytest.mark.root
SAMPLES = 100
GAP_NS = 3_000_000  # between samples: one sample's spikes are through the 0.5–5.5 ms delays before the next
needs_mininet = pytest.mark.skipif(importlib.util.find_spec("mininet") is None or shutil.which("mnexec") is None,
                                   reason="needs Mininet: pip install -e '.[mininet]' and apt-get install mininet (mnexec)")


WEIGHTS = np.array([[0.5, -1.5], [1.5, 2.5], [2.5, 0.5]])  # conftest's: delays 0.5 … 5.5 ms per port


def _plan(loss: float) -> FabricPlan:
    net = Pi2Network((DenseLayer(WEIGHTS, 1),), (3,))
    return compile_network(net, Realisation.from_profile(load_profile("full")), 1000.0, np.zeros((1, 3)), loss=loss,
                           prune_margin=None, lead=0.0, delay_lines="shared-clone")


def _frames(plan: FabricPlan) -> Schedule:
    origin = time.clock_gettime_ns(time.CLOCK_REALTIME) + 10**9  # every arrival early: never late
    frames = [spike_frame("02:00:00:00:00:01", "ff:ff:ff:ff:ff:ff", "10.0.0.1", "10.0.0.255",
                          SpikeHeader(layer=0, source=0, sign=0, sample=1 + s, seq=s, kind=KIND_SPIKE, time_ns=origin),
                          plan.packets.spike_bytes) for s in range(SAMPLES)]
    return Schedule(np.arange(SAMPLES, dtype=np.int64) * GAP_NS, frames)


def _run(plan: FabricPlan, backend: str, spikes) -> tuple[np.ndarray, list[dict], list[set[str]], str]:
    """Inject the samples; return the arrivals, the gate counters, each host end's ingress filter kinds."""
    try:
        with build_fabric(plan, backend=backend) as fab:
            kinds = []
            with netns.iproute(fab.host_netns) as ipr:
                for port in fab.ports[0]:
                    kinds.append({f.get_attr("TCA_KIND") for f in ipr.get_filters(port.ifindex, parent=parse_handle(CLSACT_INGRESS, 'clsact ingress'))}
                                 - {None})
            expected = len(fab.ports[0]) * SAMPLES
            _, capture = spikes.inject(fab.host_netns, fab.inject_ifs[0], _frames(plan), expected, wait_s=2.0)
            assert capture.dropped == 0
            return capture.arrivals, fab.gate_counters()[0], kinds, fab.run_id
    except KernelError as exc:
        if "lacks module" in str(exc):
            pytest.skip(f"this kernel cannot build the full profile: {exc}")
        raise


def test_without_loss_every_spike_reaches_its_gate(spikes):
    plan = _plan(0.0)
    assert all(drop_probability(p.gate_tc) == 0 for p in plan.layers[0].ports)
    got, counters, kinds, run = _run(plan, "netns", spikes)
    assert kinds == [{"bpf"}] * len(plan.layers[0].ports)
    assert [(c["events_passed"], c["spikes_dropped_after_k"]) for c in counters] == [(SAMPLES, 0)] * len(counters)
    assert len(got) == len(plan.layers[0].ports) * SAMPLES
    assert spikes.leftovers(run) == []


@pytest.mark.parametrize("backend", ["netns", pytest.param("mininet", marks=needs_mininet)])
def test_loss_drops_half_the_spikes_before_the_gate(backend, spikes):
    plan = _plan(0.5)
    got, counters, kinds, run = _run(plan, backend, spikes)
    assert kinds == [{"u32", "bpf"}] * len(plan.layers[0].ports)  # the gact drop runs before the gate
    # 400 spikes each kept with probability 1/2: 200 ± 10 (sd); 130..270 is 7 sd either way.
    assert 130 < len(got) < 270
    per_port = [c["events_passed"] for c in counters]
    assert sum(per_port) == len(got)  # the gate saw only the survivors, and passed each (K = 1 per sample)
    assert all(c["spikes_dropped_after_k"] == 0 for c in counters)
    assert all(10 < n < SAMPLES - 10 for n in per_port), per_port
    assert set(got["sample"].tolist()) <= set(range(1, SAMPLES + 1))
    assert spikes.leftovers(run) == []

"""The Mininet backend on a real kernel: the tiny plan builds through Mininet's API, a spike
passes a gate on every port, and nothing is left behind (links, bridges, host shells)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from testbed.errors import KernelError
from testbed.fabric import mininet_backend
from testbed.fabric.live import build_fabric
from testbed.kernel import netns
from testbed.plan.wire import KIND_PRIMER
from testbed.traffic.inject import Schedule

needs_mininet = pytest.mark.skipif(importlib.util.find_spec("mininet") is None or shutil.which("mnexec") is None,
                                   reason="needs Mininet: pip install -e '.[mininet]' and apt-get install mininet (mnexec)")


def test_missing_mnexec_is_a_one_line_error(monkeypatch, tiny_plan):
    monkeypatch.setattr(mininet_backend.shutil, "which", lambda name: None)
    with pytest.raises(KernelError, match="apt-get install mininet"):
        mininet_backend.build(tiny_plan, None)  # fails before touching the registry or the kernel


@pytest.mark.root
@needs_mininet
def test_tiny_plan_builds_and_passes_a_spike(tiny_plan, spikes):
    layer = tiny_plan.layers[0]
    cpu = max(os.sched_getaffinity(0))
    with build_fabric(tiny_plan, backend="mininet", fabric_cpus=[cpu], gate_cpus=[cpu]) as fab:
        run = fab.run_id
        assert fab.backend == "mininet" and fab.host_netns.startswith("/proc/")
        root_links = {name for _, name in socket.if_nameindex()}
        assert f"p2{run}{layer.switch}" in root_links  # Mininet's switches live in the root namespace
        # RPS steered as asked, on the switch side (the root namespace's own sysfs) and the host side
        rps = f"/sys/class/net/p2{run}{layer.switch}i/queues/rx-0/rps_cpus"
        assert int(Path(rps).read_text(), 16) == 1 << cpu
        host_links = {name for _, name in netns.run_in(fab.host_netns, socket.if_nameindex)}
        assert {p.ifname for p in fab.ports[0]} | set(fab.inject_ifs) <= host_links
        with netns.iproute(None) as ipr:
            for port in layer.ports:
                index = ipr.link_lookup(ifname=f"p2{run}sw0{port.switch_if[2:]}")[0]
                assert len([c for c in ipr.get_classes(index) if c.get_attr("TCA_KIND") == "htb"]) == 6

        frames = spikes.event_frames(tiny_plan, 7, [(2, 1)])  # input 2's t⁻ event: one primer, one spike
        report, capture = spikes.inject(fab.host_netns, fab.inject_ifs[0], Schedule(np.zeros(2, dtype=np.int64), frames),
                                 len(fab.ports[0]))
        got = capture.arrivals
        assert not np.any(got["kind"] == KIND_PRIMER)
        assert sorted(got["ifindex"].tolist()) == sorted(p.ifindex for p in fab.ports[0])
        assert [c["events_passed"] for c in fab.gate_counters()[0]] == [1] * len(fab.ports[0])
    assert spikes.leftovers(run) == []

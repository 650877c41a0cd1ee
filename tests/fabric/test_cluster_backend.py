"""The cluster backend on emulated hosts (namespaces with their own sshd): a spike crosses the
VXLAN tunnels with its port's delay, shared delay lines on another host feed their members, a
layer split over two hosts floods through its trunk, and
nothing of the run is left on any host after a normal end, a failure on one host, or a SIGKILL
of the orchestrator followed by `pi2 clean`."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from testbed.cluster.emulated import underlay_links
from testbed.cluster.hosts import ClusterHost, parse_cluster
from testbed.errors import PlanError, TestbedError
from testbed.fabric import cluster_backend
from testbed.fabric.live import ClusterRequest, build_fabric
from testbed.kernel import cleanup, netns
from testbed.kernel.names import REGISTRY_DIR
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.plan.fabric_plan import FabricPlan
from testbed.plan.profiles import load_profile
from testbed.traffic.inject import Schedule

pytestmark = [pytest.mark.root, pytest.mark.skipif(
    importlib.util.find_spec("mininet") is None or shutil.which("mnexec") is None or not Path("/usr/sbin/sshd").exists(),
    reason="needs Mininet (mnexec, the mininet extra) and openssh-server (./install.sh --dev)")]

TAU_US = 1000.0
WEIGHTS_1 = np.array([[0.5, -1.5], [1.5, 2.5], [2.5, 0.5]])  # the tiny plan's layer (conftest.WEIGHTS)
WEIGHTS_2 = np.array([[1.0, -1.0], [2.0, 0.0]])  # then 2 inputs × 2 neurons


def run_leftovers(run_id: str, spikes) -> list[str]:
    """`spikes.leftovers` plus what a cluster run adds: its run directory and any process still
    using it (sshd configs, ssh -F clients) or running a shell Mininet named for the run."""
    found = spikes.leftovers(run_id)
    run_dir = REGISTRY_DIR / f"{run_id}.d"
    if run_dir.exists():
        found.append(str(run_dir))
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes()
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and (str(run_dir).encode() in cmdline or f"p2{run_id}".encode() in cmdline):
                found.append(f"process {proc.name}: {cmdline[:60]!r}")
    return found


def _settled(run_id: str, spikes, timeout_s: float = 10.0) -> list[str]:
    """Leftovers once processes that were killed have had time to exit (the kernel tears a PID
    namespace down asynchronously); [] as soon as nothing is left."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = run_leftovers(run_id, spikes)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_two_host_fabric_passes_a_spike_across_the_tunnel_with_the_right_delay(tiny_plan, spikes):
    plan = tiny_plan
    layer = plan.layers[0]
    with build_fabric(plan, backend="mininet", cluster=ClusterRequest(parse_cluster("emulated:2"))) as fab:
        run = fab.run_id
        assert fab.backend == "cluster" and [(l.src, l.dst) for l in fab.cluster.timing.links] == [("localhost", "e1")]
        assert netns.exists(f"p2{run}e1")  # the emulated host, with its sshd
        with netns.iproute(fab.host_netns) as ipr:  # the relay's ends are tunnel ends, not veths
            kinds = {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND")
                     for link in ipr.get_links() if link.get_attr("IFLA_LINKINFO")}
        assert {kinds[p.ifname] for p in fab.ports[0]} == {"vxlan"} and kinds[fab.inject_ifs[0]] == "vxlan"
        # The host's own (root) namespace holds only its underlay: every tunnel end was born in its
        # node, so no crash can strand one there (testbed.fabric.cluster_nodes.tunnel_end).
        with netns.iproute(f"p2{run}e1") as ipr:
            names = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        assert names - {"lo"} == {underlay_links(run, ClusterHost("e1", "", f"p2{run}e1"))[1]}

        frames = spikes.event_frames(plan, 7, [(2, 1)])  # input 2's t⁻ event: one primer, one spike
        report, capture = spikes.inject(fab.host_netns, fab.inject_ifs[0], Schedule(np.zeros(2, dtype=np.int64), frames),
                                        len(fab.ports[0]), wait_s=2.0)
        rtt_us = fab.cluster.timing.links[0].rtt_us
        by_index = {p.ifindex: p for p in fab.ports[0]}
        got = {}
        for arrival in capture.arrivals:
            port = by_index[int(arrival["ifindex"])]
            got[(port.neuron, port.sign)] = (int(arrival["t_ns"]) - int(report.tx_real_ns[1])) / 1e3 - rtt_us
        assert len(got) == len(layer.ports)
        for port in layer.ports:
            delays = sorted({s.delay_us for s in port.synapses})  # 1 ms apart (conftest)
            want = next(s.delay_us for s in port.synapses if (s.source, s.sign) == (2, 1))
            # the delay the spike took, less the tunnels' round trip, is its port's delay for (2, 1)
            assert min(delays, key=lambda d: abs(d - got[(port.neuron, port.sign)])) == want
        assert [c["events_passed"] for c in fab.gate_counters()[0]] == [1] * len(layer.ports)
    assert _settled(run, spikes) == []


def two_layer_plan() -> FabricPlan:
    net = Pi2Network((DenseLayer(WEIGHTS_1, 1), DenseLayer(WEIGHTS_2, 1)), (3,))
    return compile_network(net, Realisation.from_profile(load_profile("shaper")), TAU_US, np.zeros((1, 3)),
                           prune_margin=None, lead=0.0, delay_lines="per-synapse")


SHARED_WEIGHTS = np.array([[0.5, 0.5], [1.5, -1.5], [2.5, 2.5]])  # tests/fabric/test_shared_lines.py's layer


def shared_plan() -> FabricPlan:
    net = Pi2Network((DenseLayer(SHARED_WEIGHTS, 2),), (3,))
    return compile_network(net, Realisation.from_profile(load_profile("shaper")), TAU_US, np.zeros((1, 3)),
                           prune_margin=0.0, lead=0.0, delay_lines="shared")


def test_shared_lines_on_another_host_feed_exactly_their_members_across_the_tunnel(spikes):
    plan = shared_plan()
    layer = plan.layers[0]
    member_of = {(ln.source, ln.sign, q): ln for ln in layer.lines for q in ln.members}
    events = [(i, s) for s in (0, 1) for i in range(3)]
    origin = time.clock_gettime_ns(time.CLOCK_REALTIME) + 3600 * 10**9  # every copy early: none is late
    with build_fabric(plan, backend="mininet", cluster=ClusterRequest(parse_cluster("emulated:2"))) as fab:
        run = fab.run_id
        assert [p.to_dict() for p in fab.cluster.placement.parts] == [{"layer": 0, "host": "e1", "neurons": [0, 2]}]
        with netns.iproute(fab.host_netns) as ipr:  # the lines are on e1; the ports' ends stay here
            kinds = {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND")
                     for link in ipr.get_links() if link.get_attr("IFLA_LINKINFO")}
        assert kinds[fab.inject_ifs[0]] == "vxlan" and {kinds[p.ifname] for p in fab.ports[0]} == {"veth"}
        states = spikes.one_event_per_sample(fab, plan, events, origin)
        rtt_us = fab.cluster.timing.links[0].rtt_us
        delays = sorted({ln.delay_us for ln in layer.lines})
        for (event, q), (count, latency_ns) in states.items():
            line = member_of.get((*event, q))
            assert count == (0 if line is None else 1), (event, q)
            if line is not None:  # the copy took its line's delay (lines 1 ms apart) and the round trip
                took_us = latency_ns / 1e3 - rtt_us
                assert min(delays, key=lambda d: abs(d - took_us)) == line.delay_us, (event, q, took_us)
    assert _settled(run, spikes) == []


def test_a_split_layer_with_shared_delay_lines_is_refused_before_anything_is_built():
    before = set(netns.list_names())
    with pytest.raises(PlanError, match="cannot be split over hosts.*--delay-lines per-synapse"):
        with build_fabric(shared_plan(), backend="mininet",
                          cluster=ClusterRequest(parse_cluster("emulated:2"), max_ports=2)):
            pass
    assert not set(netns.list_names()) - before


def test_a_layer_split_over_two_hosts_floods_through_its_trunk(spikes):
    plan = two_layer_plan()
    request = ClusterRequest(parse_cluster("emulated:3"), max_ports=2)  # every layer: one neuron per part
    with build_fabric(plan, backend="mininet", cluster=request) as fab:
        run = fab.run_id
        placement_hosts = {(l.src, l.dst) for l in fab.cluster.timing.links}
        assert ("e1", "e2") in placement_hosts or ("e2", "e1") in placement_hosts  # a trunk between hosts
        frames = spikes.event_frames(plan, 3, [(0, 0)])
        _, capture = spikes.inject(fab.host_netns, fab.inject_ifs[0], Schedule(np.zeros(2, dtype=np.int64), frames),
                                   len(fab.ports[0]), wait_s=2.0)
        assert sorted(int(i) for i in capture.arrivals["ifindex"]) == sorted(p.ifindex for p in fab.ports[0])
    assert _settled(run, spikes) == []


def test_a_failure_on_one_host_cleans_every_host(monkeypatch, spikes):
    """The part program cannot start on the remote hosts (a bad interpreter path): the build fails
    with a one-line error after the relay, both emulated hosts and every tunnel exist."""
    monkeypatch.setattr(cluster_backend.sys, "executable", "/nonexistent/python3")
    made: list[str] = []
    monkeypatch.setattr(cluster_backend.timing, "measure", lambda *a: made.append("measured"))
    with pytest.raises(TestbedError, match=r"part p2[a-z0-9]{4}sw\S* on e[12]: .*doctor --cluster") as failed:
        with build_fabric(two_layer_plan(), backend="mininet", cluster=ClusterRequest(parse_cluster("emulated:3"))):
            pass
    assert made == []  # it failed while building parts, after every node and tunnel existed
    run = str(failed.value).split()[1][2:6]
    assert _settled(run, spikes) == []


KILLED = """
import sys, time
sys.path.insert(0, {here!r})
from test_cluster_backend import two_layer_plan
from testbed.cluster.emulated import underlay_links
from testbed.cluster.hosts import ClusterHost, parse_cluster
from testbed.fabric.live import ClusterRequest, build_fabric
with build_fabric(two_layer_plan(), backend="mininet", cluster=ClusterRequest(parse_cluster("emulated:3"), max_ports=2)) as fab:
    print(fab.run_id, flush=True)
    time.sleep(600)
"""


def test_sigkill_of_the_orchestrator_then_clean_leaves_nothing_on_any_host(spikes):
    here = str(Path(__file__).resolve().parent)
    child = subprocess.Popen([sys.executable, "-c", KILLED.format(here=here)], stdout=subprocess.PIPE, text=True)
    try:
        run = child.stdout.readline().strip()  # type: ignore[union-attr]
        assert len(run) == 4, "the orchestrator did not build its fabric"
        assert netns.exists(f"p2{run}e2") and run_leftovers(run, spikes)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    removed = cleanup.clean(frozenset({run}))
    assert run in removed["registries"] and len(removed["pids"]) >= 3  # sshds, relay shell, ssh clients
    assert _settled(run, spikes) == []

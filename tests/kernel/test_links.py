"""Namespaces, veths and bridges from LinkBuilder carry real packets: a bridge floods one
spike to every port at once (no STP wait), IPv6 stays off, names are the run's."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from testbed.errors import KernelError
from testbed.kernel import netns
from testbed.kernel.names import run_id_of

pytestmark = pytest.mark.root

PORTS = 8


def test_bridge_floods_a_spike_to_every_port_immediately(run, builder, net) -> None:
    """Sender → bridge with PORTS receiver ports: one broadcast spike arrives once at each port,
    sent right after link-up (STP off, forward_delay 0: no ~1 s listening/learning wait)."""
    hub = builder.namespace("hub")
    bridge = builder.bridge("br", hub)
    builder.up(bridge, hub)
    ends = []
    for i in range(PORTS + 1):
        ns = builder.namespace(f"n{i}")
        inner, port = builder.veth(f"i{i}", f"p{i}", ns, hub)
        builder.enslave(port, bridge, hub)
        builder.up(port, hub)
        builder.address(inner, f"10.78.0.{i + 1}", 24, ns)
        builder.up(inner, ns)
        ends.append(ns)
    sender, receivers = net.sender(ends[0]), [net.receiver(ns) for ns in ends[1:]]
    for seq in range(20):
        sender.sendto(struct.pack("!II", 1, seq), ("10.78.0.255", 5402))
    counts = [len(net.receive(r, 20, timeout_s=0.5)) for r in receivers]
    assert counts == [20] * PORTS


def test_objects_are_named_for_the_run_and_ipv6_is_off(run, builder, pair) -> None:
    assert {run_id_of(n) for n in (pair.tx, pair.rx, pair.tx_if, pair.rx_if)} == {run.run_id}
    root_end, ns_end = builder.veth("ra", "rb", None, pair.tx)

    def read(ns: str | None, name: str) -> str:
        return netns.run_in(ns, Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").read_text)

    assert read(None, root_end).strip() == "1"
    assert read(pair.tx, ns_end).strip() == "1"
    assert read(pair.tx, pair.tx_if).strip() == "1"
    kinds = [e["kind"] for e in run.entries]
    assert kinds.count("netns") == 2 and kinds.count("link") == 2


def test_link_errors_name_the_object(builder, pair) -> None:
    with pytest.raises(KernelError, match="veth .*t/.*kernel said"):
        builder.veth("t", "zz", pair.tx, pair.tx)  # the name exists in that namespace
    with pytest.raises(KernelError, match="no such interface"):
        builder.up("p2nothere", pair.tx)
    with pytest.raises(KernelError, match="suffix"):
        builder.namespace("much-too-long")


def test_batched_veths_are_bridge_ports_in_order_with_their_peers_across(run, builder, net) -> None:
    """LinkBuilder.veths: one netlink batch makes every pair, each recorded first, each end in its
    namespace and already a port of the bridge, attached in the order given (the flood order the
    plan assumes: Linux adds a new port at the head of the list a flood walks)."""
    hub, far = builder.namespace("hub"), builder.namespace("far")
    bridge = builder.bridge("br", hub)
    made = builder.veths([(f"p{i}", f"q{i}") for i in range(PORTS)], hub, far, master=bridge)
    assert made == [(builder.name(f"p{i}"), builder.name(f"q{i}")) for i in range(PORTS)]
    assert [(e["name"], e["peer"]) for e in run.entries if e["kind"] == "link"] == made
    with netns.iproute(hub) as ipr:
        master = ipr.link_lookup(ifname=bridge)[0]
        ports = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()
                 if link.get_attr("IFLA_MASTER") == master}
    assert sorted(ports, key=ports.get) == [p for p, _ in made]
    far_names = {name for _, name in netns.run_in(far, socket.if_nameindex)}
    assert {q for _, q in made} <= far_names
    with pytest.raises(KernelError, match=r"veth .*p0.*kernel said"):
        builder.veths([("p0", "x0")], hub, far)  # the name exists: the batch names the pair

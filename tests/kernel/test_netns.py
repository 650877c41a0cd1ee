"""testbed.kernel.netns on the real kernel: namespaces made in-process come up with loopback up,
`attach` names an existing namespace, and `write_sysfs` writes the devices a namespace sees."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from testbed.errors import KernelError
from testbed.kernel import netns
from testbed.kernel.names import object_name

pytestmark = pytest.mark.root


def test_a_new_namespace_has_loopback_up(builder) -> None:
    ns = builder.namespace("lo")
    with netns.iproute(ns) as ipr:
        (lo,) = ipr.get_links(1)  # lo is the first device of every namespace
        assert lo.get_attr("IFLA_IFNAME") == "lo" and lo["flags"] & netns.IFF_UP


def test_attach_names_the_same_namespace_and_remove_drops_only_the_name(run, builder) -> None:
    ns = builder.namespace("orig")
    builder.veth("a", "b", ns, ns)
    alias = object_name(run.run_id, "alias")
    run.record("netns", name=alias)
    netns.attach(str(netns.path_of(ns)), alias)
    names = {name for _, name in netns.run_in(alias, socket.if_nameindex)}
    assert {builder.name("a"), builder.name("b")} <= names
    with pytest.raises(KernelError, match="already exists"):
        netns.attach(str(netns.path_of(ns)), alias)
    assert netns.remove(alias) and not netns.exists(alias)
    assert builder.name("a") in {name for _, name in netns.run_in(ns, socket.if_nameindex)}


@pytest.mark.skipif(not Path("/sys/class/net/lo/queues/rx-0/rps_cpus").exists(),
                    reason="this kernel has no RPS (CONFIG_RPS; the one-CPU UML guest)")
def test_write_sysfs_writes_the_namespace_devices(builder) -> None:
    """The device exists only inside the namespace: the root's /sys has no such file."""
    ns, other = builder.namespace("sys"), builder.namespace("sys2")
    end, _ = builder.veth("rx", "tx", ns, other)
    path = f"/sys/class/net/{end}/queues/rx-0/rps_cpus"
    netns.write_sysfs(ns, {path: "1"})
    # an independent view: iproute2 mounts the namespace's own sysfs for `ip netns exec`
    shown = subprocess.run(["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True, check=True)
    assert int(shown.stdout, 16) == 1
    with pytest.raises(KernelError, match="writing"):
        netns.write_sysfs(other, {path: "1"})  # not a device of that namespace

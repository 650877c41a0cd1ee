"""Emulated cluster hosts on a real kernel: namespaces each running its own sshd, reachable with
the run's own keys only, every object recorded and removed by `pi2 down`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testbed.cluster.emulated import SUBNET, emulate_hosts
from testbed.cluster.hosts import ssh_command
from testbed.kernel import cleanup, netns
from testbed.kernel.names import RunRegistry

pytestmark = [pytest.mark.root, pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(),
                                                   reason="needs openssh-server (./install.sh --dev)")]


def test_each_emulated_host_is_its_own_namespace_with_sshd_and_down_removes_it():
    reg = RunRegistry.create()
    run = reg.run_id
    try:
        hosts = emulate_hosts(reg, 3)
        assert [h.name for h in hosts.hosts] == ["localhost", "e1", "e2"]
        assert [h.address for h in hosts.hosts] == [f"{SUBNET}.1", f"{SUBNET}.2", f"{SUBNET}.3"]
        for host in hosts.hosts[1:]:
            done = subprocess.run(ssh_command(hosts, host, "ip", "-o", "-4", "addr", "show"), capture_output=True,
                                  text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            assert f"inet {host.address}/24" in done.stdout and f"{SUBNET}.1/" not in done.stdout  # its own network
            assert netns.exists(host.netns)
        # only the run's key opens a session: without the run's ssh config, ssh has no key
        bare = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
                               "UserKnownHostsFile=/dev/null", "-i", "/dev/null", f"root@{hosts.hosts[1].address}", "true"],
                              capture_output=True, timeout=30)
        assert bare.returncode != 0
        assert oct((reg.run_dir / "client_key").stat().st_mode & 0o777) == "0o600"
        kinds = [e["kind"] for e in reg.entries]
        assert kinds.count("netns") == 2 and kinds.count("pid") == 2 and kinds.count("bridge") == 1
        sshd = [e["pid"] for e in reg.of_kind("pid")]
    finally:
        removed = cleanup.down(run)
    assert sorted(removed["pids"]) == sorted(sshd)
    assert not any(n.startswith(f"p2{run}") for n in netns.list_names())
    assert not (reg.directory / f"{run}.d").exists()
    for pid in sshd:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"

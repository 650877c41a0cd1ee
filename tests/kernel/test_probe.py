"""The capability probe against the real kernel: it must agree with iproute2 and leave nothing behind."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.errors import NeedsRootError
from testbed.kernel import probe
from testbed.kernel.names import REGISTRY_DIR, REGISTRY_SUFFIX, RunRegistry, new_run_id, object_name, run_id_of
from testbed.plan.capabilities import ACTIONS, CLASSIFIERS, DEVICES, QDISCS

NETNS_DIR = Path("/run/netns")

# iproute2's words when a kind does not exist (same kernel extack, printed by tc/ip).
UNKNOWN = ("Specified qdisc kind is unknown", "TC classifier not found", "Failed to load TC action module",
           "Unknown device type")

# Independent check: one iproute2 command per capability (arguments after `tc -n NS` / `ip -n NS`).
QDISC_ARGS = {
    "netem": "root netem delay 1ms", "tbf": "root tbf rate 1mbit burst 1600 limit 3200", "htb": "root htb default 0",
    "pfifo": "root pfifo limit 10", "bfifo": "root bfifo limit 10000",
    "cbs": "root cbs idleslope 1000 sendslope -1000 hicredit 10 locredit -10", "etf": "root etf clockid CLOCK_TAI delta 300000",
    "fq": "root fq", "fq_codel": "root fq_codel", "prio": "root prio",
    "taprio": "root taprio num_tc 1 map 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 queues 1@0 base-time 0 sched-entry S 01 300000 clockid CLOCK_TAI",
    "clsact": "clsact", "ingress": "ingress",
}
FILTER_ARGS = {
    "u32": "u32 match u32 0 0 classid 1:1",
    "bpf": "bpf bytecode '1,6 0 0 4294967295,' classid 1:1",  # classic BPF "accept": cls_bpf without an eBPF loader
    "flower": "flower classid 1:1",
    "matchall": "matchall classid 1:1",
    "gact": "u32 match u32 0 0 action gact drop",
    "police": "u32 match u32 0 0 action police rate 1mbit burst 12k",
    "mirred": "u32 match u32 0 0 action mirred egress redirect dev lo",
}


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    name = object_name(new_run_id(), "chk")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def iproute2_has(ns: str, capability: str) -> bool:
    """Try the capability with tc/ip in `ns`; False only if the kernel says the kind is unknown."""
    if capability in QDISC_ARGS:
        cmd = f"tc -n {ns} qdisc add dev lo {QDISC_ARGS[capability]}"
        undo = f"tc -n {ns} qdisc del dev lo {QDISC_ARGS[capability].split()[0]}"
    elif capability in FILTER_ARGS:
        prio = list(FILTER_ARGS).index(capability) + 1
        cmd = f"tc -n {ns} filter add dev lo ingress prio {prio} protocol all {FILTER_ARGS[capability]}"
        undo = None
    else:
        peer = f" peer name {ns[:6]}pb" if capability == "veth" else ""
        cmd = f"ip -n {ns} link add {ns[:6]}{capability[:3]} type {capability}{peer}"
        undo = None
    result = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if result.returncode == 0 and undo is not None:
        subprocess.run(undo, shell=True, check=True)
    return result.returncode == 0 or not any(words in result.stderr for words in UNKNOWN)


@pytest.mark.root
def test_probe_agrees_with_iproute2(scratch_ns: str) -> None:
    caps = probe.probe_capabilities()
    subprocess.run(["tc", "-n", scratch_ns, "qdisc", "add", "dev", "lo", "clsact"], check=True)
    names = [n for n in (*QDISCS, *DEVICES) if n not in ("clsact", "ingress")]
    verdicts = {n: iproute2_has(scratch_ns, n) for n in names}
    subprocess.run(["tc", "-n", scratch_ns, "qdisc", "del", "dev", "lo", "clsact"], check=True)
    verdicts |= {n: iproute2_has(scratch_ns, n) for n in ("clsact", "ingress")}
    subprocess.run(["tc", "-n", scratch_ns, "qdisc", "add", "dev", "lo", "clsact"], check=True)
    verdicts |= {n: iproute2_has(scratch_ns, n) for n in (*CLASSIFIERS, *ACTIONS)}
    disagree = {n: (caps.get(n).available, v, caps.get(n).detail) for n, v in verdicts.items() if caps.has(n) != v}
    assert disagree == {}
    assert caps.has("netns")


@pytest.mark.root
def test_probe_removes_its_namespace() -> None:
    caps = probe.probe_capabilities()
    name = caps.get("netns").detail.removeprefix("created namespace ")
    assert name.endswith(probe.NAMESPACE_SUFFIX) and run_id_of(name) is not None
    assert not (NETNS_DIR / name).exists()
    assert not (REGISTRY_DIR / f"{run_id_of(name)}{REGISTRY_SUFFIX}").exists()  # its run is gone too


@pytest.mark.root
def test_probe_records_its_namespace_and_removes_it_when_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def broken(ipr, rid):
        name = object_name(rid, probe.NAMESPACE_SUFFIX)
        seen.append(((NETNS_DIR / name).exists(), RunRegistry.load(rid).namespaces == [name]))
        seen.append(rid)
        raise RuntimeError("injected failure")

    monkeypatch.setattr(probe, "_probe_devices", broken)
    with pytest.raises(RuntimeError, match="injected failure"):
        probe.probe_capabilities()
    assert seen[0] == (True, True)  # made, and recorded in its run's registry (before: LinkBuilder.namespace)
    assert not (NETNS_DIR / object_name(seen[1], probe.NAMESPACE_SUFFIX)).exists()
    assert not (REGISTRY_DIR / f"{seen[1]}{REGISTRY_SUFFIX}").exists()


def test_probe_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe.os, "geteuid", lambda: 1000)
    with pytest.raises(NeedsRootError, match=r"^pi2 doctor needs root \(CAP_NET_ADMIN\) to create a probe namespace: run it with sudo$"):
        probe.probe_capabilities("pi2 doctor")

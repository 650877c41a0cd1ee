"""Capability probe: ask the running kernel what it can realise by creating real objects.

Reading /proc or module lists is not enough (a module may be built in, absent, or refuse to
load), so the probe does what the fabric will do: in ONE throw-away network namespace
(``p2<run id>probe``, removed in ``finally``) it adds each qdisc kind to ``lo``, each
classifier and action to a clsact hook, and creates a veth pair, a bridge and an ifb. The
kernel's answer decides:

- success, or an error *after* the kind was found (e.g. "Missing CBS parameter"): available;
- ENOENT "Specified qdisc kind is unknown" / "TC classifier not found" / "Failed to load TC
  action module", EOPNOTSUPP "Unknown device type": missing;
- anything else: not available, with the kernel's words in `detail` (inconclusive).

Objects are built with real parameters where pyroute2 can encode them. For cbs, etf, taprio,
bfifo, fq and flower pyroute2 has no option encoder, so the probe sends the kind alone: the
kernel looks the kind up (autoloading its module) before it parses options, so its answer
still separates "unknown kind" from "known kind, options missing" (bfifo and fq accept
defaults and are really created).

On a modular kernel the probe autoloads the modules it finds, exactly as ``tc``/``ip`` would;
the openvswitch datapath is only *resolved* (``modprobe --dry-run``), never loaded.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWQDISC, RTM_NEWTFILTER, TC_H_ROOT
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from testbed.errors import KernelError, NeedsRootError
from testbed.kernel import bpf, cleanup, netns
from testbed.kernel.links import LinkBuilder
from testbed.kernel.names import RunRegistry, object_name
from testbed.kernel.tc import ETH_P_ALL, parse_handle
from testbed.plan.capabilities import CAPABILITY_NAMES, Capabilities, Capability
from testbed.plan.tc import CLSACT_INGRESS as CLSACT_INGRESS_HANDLE

NAMESPACE_SUFFIX = "probe"
CLSACT_INGRESS = parse_handle(CLSACT_INGRESS_HANDLE, "the clsact qdisc's ingress hook")
PROBE_HANDLE = 0x10000  # "1:"

# What the kernel says when a kind is not built and no module loads (iproute2 prints the same).
QDISC_UNKNOWN = "Specified qdisc kind is unknown"
CLASSIFIER_UNKNOWN = "TC classifier not found"
ACTION_UNKNOWN = "Failed to load TC action module"
DEVICE_UNKNOWN = "Unknown device type"

# Real, valid objects for the kinds pyroute2 can encode (pyroute2 units: netem delay in µs,
# tbf/police rate as a tc rate string, burst/limit in bytes). Other qdisc kinds go kind-only.
QDISC_OBJECTS: dict[str, dict[str, Any]] = {
    "netem": {"delay": 1000},
    "tbf": {"rate": "1mbit", "burst": 1600, "limit": 3200},
    "htb": {"default": 0},
    "pfifo": {"limit": 10},
    "prio": {"bands": 3, "priomap": [1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]},
    "fq_codel": {},
}
KIND_ONLY_QDISCS = ("bfifo", "cbs", "etf", "fq", "taprio")
INGRESS_QDISCS = ("clsact", "ingress")  # attach at the ingress hook, not as root; mutually exclusive

# Actions ride on a match-everything u32 filter; their kernel module loads when the filter is added.
U32_MATCH_ALL = {"target": 0x10001, "keys": ["0x0/0x0+0"]}
ACTION_OBJECTS: dict[str, Callable[[int], dict[str, Any]]] = {
    "gact": lambda _ifindex: {"kind": "gact", "action": "drop"},
    "mirred": lambda ifindex: {"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": ifindex},
    "police": lambda _ifindex: {"kind": "police", "rate": "1mbit", "burst": 12000, "limit": 0},
}


def probe_capabilities(purpose: str = "the capability probe") -> Capabilities:
    """Probe this kernel and machine; `purpose` names the caller in the needs-root error."""
    if os.geteuid() != 0:
        raise NeedsRootError(f"{purpose} needs root (CAP_NET_ADMIN) to create a probe namespace: run it with sudo")
    # A run of its own, so the namespace is recorded before it exists (a killed probe leaves
    # nothing `pi2 clean` cannot find) and made the one way the testbed makes namespaces.
    registry = RunRegistry.create()
    name = object_name(registry.run_id, NAMESPACE_SUFFIX)
    found: dict[str, Capability] = {}
    ipr: IPRoute | None = None
    try:
        try:
            with LinkBuilder(registry) as lb:
                lb.namespace(NAMESPACE_SUFFIX)
            ipr = netns.iproute(name, flags=0, ext_ack=True, groups=0)
        except OSError as exc:
            raise KernelError(
                f"probe namespace {name}: cannot create it ({exc}); the kernel needs network namespaces (CONFIG_NET_NS)"
            ) from None
        found["netns"] = Capability("netns", True, f"created namespace {name}")
        lo = ipr.link_lookup(ifname="lo")[0]
        found.update(_probe_qdiscs(ipr, lo))
        found.update(_probe_filters(ipr, lo, hooked=found["clsact"].available))
        found.update(_probe_devices(ipr, registry.run_id))
    finally:
        if ipr is not None:
            ipr.close()  # the socket pins the namespace: close it before removing the name
        cleanup.down(registry.run_id)
    found.update(_probe_tools())
    return Capabilities(os.uname().release, tuple(found[n] for n in CAPABILITY_NAMES))


def _message(exc: NetlinkError) -> str:
    return str(exc.args[1]) if len(exc.args) > 1 and exc.args[1] else os.strerror(exc.code)


def _judge(name: str, exc: NetlinkError, unknown: str, unknown_errno: int = errno.ENOENT) -> Capability:
    """Turn the kernel's refusal into a verdict (see the module docstring)."""
    text = _message(exc)
    if exc.code == unknown_errno and (unknown in text or text == os.strerror(unknown_errno)):
        return Capability(name, False, f"kernel: {text}")
    if exc.code in (errno.EINVAL, errno.EOPNOTSUPP, errno.ERANGE):
        return Capability(name, True, f"kind known; the probe object was refused: {text}")
    return Capability(name, False, f"inconclusive: {text} (errno {exc.code})")


def _kind_only(ipr: IPRoute, msg_type: int, index: int, parent: int, kind: str, handle: int = 0, info: int = 0) -> None:
    """Send a tc object of `kind` with no options (for kinds pyroute2 cannot encode)."""
    msg = tcmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    msg["handle"] = handle
    msg["parent"] = parent
    msg["info"] = info
    msg["attrs"] = [("TCA_KIND", kind)]
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    # the batch call, because IPRoute.nlm_request is broken in pyroute2 0.9.7 (KeyError 'nlm_generator')
    ipr.nlm_request_batch([msg])


def _probe_qdiscs(ipr: IPRoute, index: int) -> dict[str, Capability]:
    found: dict[str, Capability] = {}
    for kind in (*QDISC_OBJECTS, *KIND_ONLY_QDISCS):
        try:
            if kind in QDISC_OBJECTS:
                ipr.tc("add", kind, index=index, handle=PROBE_HANDLE, **QDISC_OBJECTS[kind])
            else:
                _kind_only(ipr, RTM_NEWQDISC, index, TC_H_ROOT, kind, handle=PROBE_HANDLE)
        except NetlinkError as exc:
            found[kind] = _judge(kind, exc, QDISC_UNKNOWN)
            continue
        found[kind] = Capability(kind, True, "created as root qdisc")
        ipr.tc("del", index=index, root=True, handle=PROBE_HANDLE)
    for kind in INGRESS_QDISCS:
        try:
            ipr.tc("add", kind, index=index)
        except NetlinkError as exc:
            found[kind] = _judge(kind, exc, QDISC_UNKNOWN)
            continue
        found[kind] = Capability(kind, True, "created at the ingress hook")
        ipr.tc("del", kind, index=index)
    return found


def _probe_filters(ipr: IPRoute, index: int, hooked: bool) -> dict[str, Capability]:
    """Classifiers and actions, each a filter of its own priority on lo's clsact ingress hook."""
    names = ("u32", "bpf", "flower", "matchall", "gact", "mirred", "police")
    if not hooked:
        return {n: Capability(n, False, "not probed: no clsact qdisc to attach filters to") for n in names}
    ipr.tc("add", "clsact", index=index)
    at = {"index": index, "parent": CLSACT_INGRESS, "protocol": ETH_P_ALL}
    found: dict[str, Capability] = {}

    def attempt(name: str, unknown: str, add: Callable[[], None], how: str) -> None:
        try:
            add()
        except NetlinkError as exc:
            found[name] = _judge(name, exc, unknown)
        else:
            found[name] = Capability(name, True, how)

    attempt("u32", CLASSIFIER_UNKNOWN, lambda: ipr.tc("add-filter", "u32", prio=1, **at, **U32_MATCH_ALL),
            "created a match-all u32 filter")
    found["bpf"] = _probe_bpf(ipr, at)
    attempt("flower", CLASSIFIER_UNKNOWN,
            lambda: _kind_only(ipr, RTM_NEWTFILTER, index, CLSACT_INGRESS, "flower", info=_filter_info(3)),
            "created")
    attempt("matchall", CLASSIFIER_UNKNOWN, lambda: ipr.tc("add-filter", "matchall", prio=4, **at),
            "created a matchall filter")
    for prio, (name, action) in enumerate(ACTION_OBJECTS.items(), start=10):
        if not found["u32"].available:
            found[name] = Capability(name, False, "not probed: actions ride on a u32 filter and u32 is missing")
            continue
        attempt(name, ACTION_UNKNOWN,
                lambda prio=prio, action=action: ipr.tc("add-filter", "u32", prio=prio, action=[action(index)],
                                                        **at, **U32_MATCH_ALL),
                "created on a u32 filter")
    return found


def _filter_info(prio: int) -> int:
    # tcmsg.info of a filter: priority in the upper 16 bits, protocol (network order) in the lower.
    return (prio << 16) | socket.htons(ETH_P_ALL)


def _probe_bpf(ipr: IPRoute, at: dict[str, Any]) -> Capability:
    """cls_bpf in direct-action mode with a loaded program: what the eBPF gate needs."""
    accept_all = bpf.mov64(bpf.R0, bpf.TC_ACT_OK).encode() + bpf.exit_insn().encode()
    try:
        fd = bpf.load_program(accept_all, "p2probe")
    except KernelError as exc:
        return Capability("bpf", False, f"cannot load an eBPF program: {exc}")
    try:
        ipr.tc("add-filter", "bpf", prio=2, fd=fd, name="p2probe", direct_action=True, **at)
    except NetlinkError as exc:
        return _judge("bpf", exc, CLASSIFIER_UNKNOWN)
    finally:
        os.close(fd)  # the filter holds its own reference to the program
    return Capability("bpf", True, "loaded an eBPF program and attached it direct-action")


def _probe_devices(ipr: IPRoute, run_id: str) -> dict[str, Capability]:
    found: dict[str, Capability] = {}
    for kind, extra in (("veth", {"peer": object_name(run_id, "vb")}), ("bridge", {}), ("ifb", {})):
        try:
            ipr.link("add", ifname=object_name(run_id, kind), kind=kind, **extra)
        except NetlinkError as exc:
            found[kind] = _judge(kind, exc, DEVICE_UNKNOWN, unknown_errno=errno.EOPNOTSUPP)
        else:
            found[kind] = Capability(kind, True, "created")
    return found


def _probe_tools() -> dict[str, Capability]:
    def which(name: str, program: str) -> Capability:
        path = shutil.which(program)
        return Capability(name, path is not None, path if path is not None else f"{program} not on PATH")

    mn = which("mininet", "mn")
    return {
        "tcpdump": which("tcpdump", "tcpdump"),
        "mininet": mn,
        "mininet_python": _probe_mininet_module(mn),
        "ovs_vsctl": which("ovs_vsctl", "ovs-vsctl"),
        "openvswitch": _probe_openvswitch(),
        "uml": which("uml", "linux.uml"),
    }


def _probe_mininet_module(mn: Capability) -> Capability:
    """Whether *this* interpreter can import mininet (find_spec does not run the package)."""
    if importlib.util.find_spec("mininet") is not None:
        return Capability("mininet_python", True, f"importable by {sys.executable}")
    detail = f"not importable by {sys.executable}"
    if mn.available:
        shebang = Path(mn.detail).read_bytes()[:200].split(b"\n", 1)[0]
        interpreter = shebang[2:].decode(errors="replace").strip() if shebang.startswith(b"#!") else ""
        if interpreter:
            check = subprocess.run(
                [*interpreter.split(), "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('mininet') is None)"],
                capture_output=True, timeout=10, check=False,
            )
            if check.returncode == 0:
                detail += f"; mn's interpreter {interpreter} has it"
    return Capability("mininet_python", False, detail)


def _probe_openvswitch() -> Capability:
    """Is the OVS kernel datapath loaded, or would it load? Resolved with --dry-run: nothing is loaded."""
    if Path("/sys/module/openvswitch").is_dir():
        return Capability("openvswitch", True, "module loaded")
    modprobe = shutil.which("modprobe")
    if modprobe is None:
        return Capability("openvswitch", False, "not loaded, and no modprobe to resolve it")
    result = subprocess.run([modprobe, "--dry-run", "openvswitch"], capture_output=True, text=True, timeout=10, check=False)
    if result.returncode == 0:
        return Capability("openvswitch", True, "modprobe --dry-run resolves it (not loaded)")
    words = (result.stderr.strip().splitlines() or [f"modprobe exit {result.returncode}"])[-1]
    return Capability("openvswitch", False, words)

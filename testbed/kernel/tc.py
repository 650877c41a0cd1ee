"""Build a `TcTree` (testbed.plan.tc) on an interface with batched netlink requests.

Every qdisc, class and u32 filter becomes one rtnetlink message packed here with `struct`
(layouts from include/uapi/linux/pkt_sched.h and pkt_cls.h) and queued on a `NetlinkBatch`,
so thousands of synapse classes go to the kernel in a few sendmsg calls. bpf filters attach a
program the caller already loaded (testbed.kernel.bpf) by file descriptor.

Units: plan rates are bits/s in whole bytes/s (the compiler rounds them, testbed.plan.compiler
realise_delay, so the plan's realised delays are the kernel's; a rate that is not whole bytes/s is
an error here, not rounded a second time); the kernel's tc_ratespec holds bytes/s (64-bit attribute
above 2³²−1 B/s); bursts are bytes, turned into the kernel's
64 ns "psched ticks" (PSCHED_SHIFT 6; /proc/net/psched) where the uapi wants a time.
Rate specs declare linklayer ethernet, so no 1 kB rate tables are sent (the kernel computes
transmit times from the rate itself, see psched_ratecfg_precompute).
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Callable, Mapping

from testbed.errors import KernelError, PlanError
from testbed.kernel import netns
from testbed.kernel.netlink import NLM_F_CREATE, NLM_F_EXCL, NetlinkBatch, attr, attr_str, attr_u32
from testbed.plan.tc import ClassSpec, FilterSpec, QdiscSpec, TcTree
from testbed.plan.wire import ETH_P_IP

RTM_NEWQDISC = 36
RTM_NEWTCLASS = 40
RTM_NEWTFILTER = 44
TCA_KIND = 1
TCA_OPTIONS = 2
TC_H_ROOT = 0xFFFFFFFF
TC_H_CLSACT = 0xFFFFFFF1  # also TC_H_INGRESS
CLSACT_HANDLE = 0xFFFF0000
ETH_P_ALL = 0x0003  # a filter's protocol: every frame
TC_LINKLAYER_ETHERNET = 1
NS_PER_TICK = 64  # psched tick (PSCHED_TICKS2NS: << 6)
U32_MAX = 0xFFFFFFFF
HTB_QUANTUM_BYTES = 1514  # one full Ethernet frame; only matters when classes borrow (DRR)

TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
RATESPEC = struct.Struct("=BBHhHI")  # cell_log, linklayer, overhead, cell_align, mpu, rate (B/s)
# htb: TCA_HTB_PARMS=1 INIT=2 RATE64=6 CEIL64=7; tc_htb_glob = version 3, rate2quantum, defcls, debug, direct_pkts
HTB_GLOB = struct.Struct("=5I")
HTB_OPT_TAIL = struct.Struct("=5I")  # buffer, cbuffer (ticks), quantum, level, prio
# tbf: TCA_TBF_PARMS=1 RATE64=4 BURST=6; tc_tbf_qopt tail = limit (B), buffer (ticks), mtu
TBF_TAIL = struct.Struct("=3I")
FIFO = struct.Struct("=I")  # tc_fifo_qopt: limit (packets for pfifo, bytes for bfifo)
# netem: tc_netem_qopt = latency (ticks), limit, loss (of 2³²−1), gap, duplicate, jitter; then
# TCA_NETEM_LATENCY64=10 / JITTER64=11 in ns (a struct followed by attributes, not a nest).
NETEM_QOPT = struct.Struct("=6I")
# u32: TCA_U32_CLASSID=1, SEL=5; tc_u32_sel header + one tc_u32_key (mask, val big-endian).
U32_SEL = struct.Struct("=BBBxHHhhI")
U32_KEY_VALUE = struct.Struct("!II")  # mask, val: big-endian
U32_KEY_OFFSET = struct.Struct("=ii")  # off, offmask: host order
TC_U32_TERMINAL = 1
TCA_U32_ACT = 7  # nested list of actions, run on a match instead of (or after) setting a classid
# Actions (include/uapi/linux/pkt_cls.h, tc_act/tc_gact.h): in the list, attribute i is the i-th action,
# itself {TCA_ACT_KIND=1: "gact", TCA_ACT_OPTIONS=2: {TCA_GACT_PARMS=2: tc_gact, TCA_GACT_PROB=3: tc_gact_p}}.
NLA_F_NESTED = 0x8000
TCA_ACT_KIND, TCA_ACT_OPTIONS = 1, 2
TCA_GACT_PARMS, TCA_GACT_PROB = 2, 3
TC_GACT = struct.Struct("=IIiii")  # tc_gen: index, capab, action, refcnt, bindcnt
TC_GACT_P = struct.Struct("=HHi")  # ptype, pval, paction
PGACT_NETRAND = 1  # paction with probability 1/pval, else action (net/sched/act_gact.c, gact_net_rand)
TC_ACT_UNSPEC, TC_ACT_SHOT = -1, 2  # "continue" with the next filter / drop
# bpf: TCA_BPF_CLASSID=3 FD=6 NAME=7 FLAGS=8; direct action: the program's return is the verdict.
TCA_BPF_FLAG_ACT_DIRECT = 1

REQUIRED: dict[tuple[str, str], frozenset[str]] = {
    ("qdisc", "tbf"): frozenset({"rate_bps", "burst_bytes", "limit_bytes"}),
    ("class", "htb"): frozenset({"rate_bps"}),
    ("filter", "u32"): frozenset({"key", "offset_bytes"}),  # and flowid or drop_one_in
    ("filter", "bpf"): frozenset({"program"}),
}

BpfLoader = Callable[[FilterSpec], int]
"""Returns the fd of an already-loaded BPF_PROG_TYPE_SCHED_CLS program for a bpf filter spec."""


def parse_handle(text: str, what: str) -> int:
    """tc notation → 32-bit handle: "root", "1:", "1:10", "ffff:fff2" (hex major:minor)."""
    if text == "root":
        return TC_H_ROOT
    major, sep, minor = text.partition(":")
    try:
        if not sep:
            raise ValueError
        value = (int(major, 16) << 16) | (int(minor, 16) if minor else 0)
    except ValueError:
        raise PlanError(f"{what}: handle {text!r} is not tc notation; expected 'root', 'MAJ:' or 'MAJ:MIN' in hex") from None
    if not 0 <= value <= U32_MAX or int(major, 16) > 0xFFFF or (minor and int(minor, 16) > 0xFFFF):
        raise PlanError(f"{what}: handle {text!r} out of range; major and minor are 16-bit hex")
    return value


def _require(what: str, table: str, kind: str, params: Mapping[str, Any]) -> None:
    missing = REQUIRED.get((table, kind), frozenset()) - set(params)
    if missing:
        raise PlanError(f"{what}: missing parameter(s) {sorted(missing)}")


def _int(what: str, params: Mapping[str, Any], key: str, low: int = 0, high: int = U32_MAX) -> int:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PlanError(f"{what}: {key}={value!r}; expected an integer in {low}..{high}")
    return value


def _rate(what: str, rate_bps: Any, kind: int) -> tuple[bytes, bytes]:
    """(tc_ratespec, optional 64-bit rate attribute `kind`) for a rate in bits/s."""
    if isinstance(rate_bps, bool) or not isinstance(rate_bps, (int, float)) or rate_bps < 8 or rate_bps % 8:
        raise PlanError(f"{what}: rate {rate_bps!r} bit/s; expected a multiple of 8 ≥ 8 (the kernel counts whole "
                        "bytes/s; `pi2 compile` rounds rates to the profile's rate_quantum_bps)")
    rate = int(rate_bps) // 8
    extra = attr(kind, struct.pack("=Q", rate)) if rate > U32_MAX else b""
    return RATESPEC.pack(0, TC_LINKLAYER_ETHERNET, 0, 0, 0, min(rate, U32_MAX)), extra


def _ticks(what: str, nbytes: int, rate_bps: float) -> int:
    """Time to send `nbytes` at `rate_bps`, in psched ticks (how htb stores burst sizes)."""
    ticks = round(nbytes * 8e9 / rate_bps / NS_PER_TICK)
    if ticks > U32_MAX:
        raise PlanError(f"{what}: burst {nbytes} B at {rate_bps} bit/s lasts over 274 s; use a smaller burst")
    return ticks


def _tcmsg(ifindex: int, handle: int, parent: int, info: int = 0) -> bytes:
    return TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, parent, info)


def qdisc_body(ifindex: int, spec: QdiscSpec, what: str) -> bytes:
    """RTM_NEWQDISC payload for one qdisc spec."""
    p = spec.params
    _require(what, "qdisc", spec.kind, p)
    handle, parent = parse_handle(spec.handle, what), parse_handle(spec.parent, what)
    if spec.kind == "clsact":  # one valid place: clsact's own pseudo-parent and handle ffff:
        handle, parent = CLSACT_HANDLE, TC_H_CLSACT
    options = b""
    if spec.kind == "htb":
        default = _int(what, p, "default_class", 0, 0xFFFF) if "default_class" in p else 0
        options = attr(2, HTB_GLOB.pack(3, 10, default, 0, 0))
    elif spec.kind == "tbf":
        ratespec, rate64 = _rate(what, p["rate_bps"], 4)
        burst = _int(what, p, "burst_bytes", 1)
        qopt = ratespec + RATESPEC.pack(0, 0, 0, 0, 0, 0) + TBF_TAIL.pack(
            _int(what, p, "limit_bytes"), _ticks(what, burst, p["rate_bps"]), 0)
        options = attr(1, qopt) + rate64 + attr_u32(6, burst)
    elif spec.kind in ("pfifo", "bfifo"):
        key = "limit_packets" if spec.kind == "pfifo" else "limit_bytes"
        options = FIFO.pack(_int(what, p, key)) if key in p else b""
    elif spec.kind == "netem":
        delay_ns = round(float(p.get("delay_us", 0)) * 1000)
        jitter_ns = round(float(p.get("jitter_us", 0)) * 1000)
        loss = round(float(p.get("loss_pct", 0)) / 100 * U32_MAX)
        if not (0 <= loss <= U32_MAX and delay_ns >= 0 and jitter_ns >= 0):
            raise PlanError(f"{what}: delay_us/jitter_us must be ≥ 0 and loss_pct in 0..100, got {dict(p)}")
        limit = _int(what, p, "limit_packets") if "limit_packets" in p else 1000
        qopt = NETEM_QOPT.pack(min(delay_ns // NS_PER_TICK, U32_MAX), limit, loss, 0, 0,
                               min(jitter_ns // NS_PER_TICK, U32_MAX))
        options = qopt + attr(10, struct.pack("=q", delay_ns)) + attr(11, struct.pack("=q", jitter_ns))
    body = _tcmsg(ifindex, handle, parent) + attr_str(TCA_KIND, spec.kind)
    return body + (attr(TCA_OPTIONS, options) if options else b"")


def class_body(ifindex: int, spec: ClassSpec, what: str) -> bytes:
    """RTM_NEWTCLASS payload for one htb class."""
    p = spec.params
    _require(what, "class", spec.kind, p)
    rate_bps = p["rate_bps"]
    ceil_bps = p.get("ceil_bps", rate_bps)
    burst = _int(what, p, "burst_bytes") if "burst_bytes" in p else HTB_QUANTUM_BYTES
    cburst = _int(what, p, "cburst_bytes") if "cburst_bytes" in p else burst
    rate, rate64 = _rate(what, rate_bps, 6)
    ceil, ceil64 = _rate(what, ceil_bps, 7)
    opt = rate + ceil + HTB_OPT_TAIL.pack(_ticks(what, burst, rate_bps), _ticks(what, cburst, ceil_bps),
                                          HTB_QUANTUM_BYTES, 0, 0)
    options = attr(1, opt) + rate64 + ceil64
    body = _tcmsg(ifindex, parse_handle(spec.classid, what), parse_handle(spec.parent, what))
    return body + attr_str(TCA_KIND, "htb") + attr(TCA_OPTIONS, options)


def random_drop_action(one_in: int) -> bytes:
    """A TCA_U32_ACT list of one gact action: drop with probability 1/`one_in`, else continue
    (TC_ACT_UNSPEC: the packet goes on to the next filter, e.g. the first-K gate)."""
    options = attr(TCA_GACT_PARMS, TC_GACT.pack(0, 0, TC_ACT_UNSPEC, 0, 0)) + attr(
        TCA_GACT_PROB, TC_GACT_P.pack(PGACT_NETRAND, one_in, TC_ACT_SHOT))
    action = attr_str(TCA_ACT_KIND, "gact") + attr(TCA_ACT_OPTIONS | NLA_F_NESTED, options)
    return attr(TCA_U32_ACT | NLA_F_NESTED, attr(1 | NLA_F_NESTED, action))


def u32_body(ifindex: int, spec: FilterSpec, what: str) -> bytes:
    """RTM_NEWTFILTER payload: one 32-bit key at `offset_bytes` from the IPv4 header → flowid, or
    → a random drop (drop_one_in)."""
    p = spec.params
    _require(what, "filter", "u32", p)
    if ("flowid" in p) == ("drop_one_in" in p):
        raise PlanError(f"{what}: expected exactly one of flowid and drop_one_in, got {sorted(p)}")
    mask = _int(what, p, "mask") if "mask" in p else U32_MAX
    key = _int(what, p, "key") & mask
    sel = (U32_SEL.pack(TC_U32_TERMINAL, 0, 1, 0, 0, 0, 0, 0) + U32_KEY_VALUE.pack(mask, key)
           + U32_KEY_OFFSET.pack(_int(what, p, "offset_bytes", 0, 0xFFFF), 0))
    if "flowid" in p:
        options = attr_u32(1, parse_handle(p["flowid"], what)) + attr(5, sel)
    else:
        options = attr(5, sel) + random_drop_action(_int(what, p, "drop_one_in", 1, 0xFFFF))
    info = (_int(what, {"prio": spec.prio}, "prio", 1, 0xFFFF) << 16) | socket.htons(ETH_P_IP)
    body = _tcmsg(ifindex, 0, parse_handle(spec.parent, what), info)
    return body + attr_str(TCA_KIND, "u32") + attr(TCA_OPTIONS, options)


def attach_bpf(nl: NetlinkBatch, ifindex: int, parent: str, prio: int, fd: int, name: str,
               direct_action: bool = True) -> None:
    """Queue a bpf filter running program `fd` on every packet at `parent` (e.g. "ffff:fff2",
    clsact ingress). Direct-action programs return a tc verdict; classic ones return the
    classid to enqueue into (0: no match). The kernel takes its own reference to the program
    when `nl.commit()` runs, so the caller may close `fd` afterwards."""
    what = f"filter bpf {name} at {parent} prio {prio} on ifindex {ifindex}"
    options = attr_u32(6, fd) + attr_str(7, name) + attr_u32(8, TCA_BPF_FLAG_ACT_DIRECT if direct_action else 0)
    info = (prio << 16) | socket.htons(ETH_P_ALL)
    body = _tcmsg(ifindex, 0, parse_handle(parent, what), info) + attr_str(TCA_KIND, "bpf") + attr(TCA_OPTIONS, options)
    nl.add(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, body, what, "cls_bpf")


def queue_tree(nl: NetlinkBatch, ifindex: int, tree: TcTree, where: str, bpf_loader: BpfLoader | None = None) -> None:
    """Queue every object of `tree` on interface `ifindex` (named `where` in errors) into `nl`."""
    create = NLM_F_CREATE | NLM_F_EXCL
    # Root qdiscs, then classes, then the leaf qdiscs that hang below those classes.
    roots = [q for q in tree.qdiscs if q.parent == "root"]
    leaves = [q for q in tree.qdiscs if q.parent != "root"]
    for q in roots:
        what = f"qdisc {q.kind} {q.handle} (parent {q.parent}) on {where}"
        nl.add(RTM_NEWQDISC, create, qdisc_body(ifindex, q, what), what, f"sch_{q.kind}")
    for c in tree.classes:
        what = f"class {c.kind} {c.classid} on {where}"
        nl.add(RTM_NEWTCLASS, create, class_body(ifindex, c, what), what, f"sch_{c.kind}")
    for q in leaves:
        what = f"qdisc {q.kind} {q.handle} (parent {q.parent}) on {where}"
        nl.add(RTM_NEWQDISC, create, qdisc_body(ifindex, q, what), what, f"sch_{q.kind}")
    for f in tree.filters:
        what = f"filter {f.kind} at {f.parent} prio {f.prio} on {where}"
        if f.kind == "u32":
            nl.add(RTM_NEWTFILTER, create, u32_body(ifindex, f, what), what,
                   "act_gact" if "drop_one_in" in f.params else "cls_u32")
        else:
            _require(what, "filter", f.kind, f.params)
            if bpf_loader is None:
                raise KernelError(f"{what}: a bpf filter needs a program loader (testbed.kernel.bpf); none given")
            attach_bpf(nl, ifindex, f.parent, f.prio, bpf_loader(f), str(f.params["program"]),
                       bool(f.params.get("direct_action", 1)))


def apply_tree(ifname: str, tree: TcTree, netns_name: str | None = None, bpf_loader: BpfLoader | None = None) -> int:
    """Build `tree` on interface `ifname` in namespace `netns_name`; return the request count.

    On a kernel error nothing is rolled back here: tc objects live and die with their link,
    so the run's cleanup (testbed.kernel.cleanup) removes them with it.
    """
    where = ifname if netns_name is None else f"{ifname} (namespace {netns_name})"
    try:
        ifindex = netns.run_in(netns_name, socket.if_nametoindex, ifname)
    except OSError:
        raise KernelError(f"tc tree on {where}: no such interface") from None
    with NetlinkBatch(netns_name) as nl:
        queue_tree(nl, ifindex, tree, where, bpf_loader)
        return nl.commit()

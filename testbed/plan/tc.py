"""tc objects as data: the qdisc/class/filter trees a plan asks the kernel to build.

The plan describes *what* each interface's traffic control looks like, and `testbed.kernel`
turns these specs into netlink messages. The simulator does not interpret them: it reads the
plan's synapses (their realised delays), windows and each gate tree's loss (`drop_probability`),
the facts the compiler derived these trees from. Handles use tc's notation ("1:", "1:10", "root",
"ffff:fff2" for clsact ingress, "ffff:fff3" for clsact egress). Parameter keys carry units.

Accepted parameters per kind (anything else is an error, never silently dropped):

- qdisc ``htb``: default_class (int, minor of the class for unclassified packets; 0 = pass unshaped)
- qdisc ``tbf``: rate_bps, burst_bytes, limit_bytes
- qdisc ``pfifo``: limit_packets;  ``bfifo``: limit_bytes
- qdisc ``netem``: delay_us, jitter_us, loss_pct, limit_packets
- qdisc ``clsact``: (none)
- class ``htb``: rate_bps, ceil_bps, burst_bytes, cburst_bytes (rates in bits per second)
- filter ``u32``: key (int, 32-bit word), mask (int), offset_bytes (from the network header), and either
  flowid (handle: matching packets go to that class) or drop_one_in (int N in 1..65535: a gact action drops
  a matching packet with probability 1/N, drawn per packet by the kernel's PRNG (gact ``random netrand``),
  and lets the others continue to the next filter; `drop_probability` reads it back)
- filter ``bpf``: program (a testbed program: "first_k_gate", "synapse_classifier", "synapse_filter",
  "line_splitter" or "line_fanout"),
  direct_action (1: the program returns a tc verdict; 0: it returns a classid), and program parameters:
  the gate's k and drop_one_in (N: it loses each spike with probability 1/N before counting it; it always
  drops primers) and window_us (the layer's deadline: the gate drops a spike received later than that after
  the origin stamped in it); the synapse programs' layer and events; the line programs' layer, events and
  lines (the most lines any one event of the layer has; the lines themselves are the plan's DelayLines)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Mapping

from testbed.errors import PlanError

QDISC_PARAMS: dict[str, frozenset[str]] = {
    "htb": frozenset({"default_class"}),
    "tbf": frozenset({"rate_bps", "burst_bytes", "limit_bytes"}),
    "pfifo": frozenset({"limit_packets"}),
    "bfifo": frozenset({"limit_bytes"}),
    "netem": frozenset({"delay_us", "jitter_us", "loss_pct", "limit_packets"}),
    "clsact": frozenset(),
}
CLASS_PARAMS: dict[str, frozenset[str]] = {
    "htb": frozenset({"rate_bps", "ceil_bps", "burst_bytes", "cburst_bytes"}),
}
FILTER_PARAMS: dict[str, frozenset[str]] = {
    "u32": frozenset({"key", "mask", "offset_bytes", "flowid", "drop_one_in"}),
    "bpf": frozenset({"program", "k", "window_us", "layer", "events", "lines", "banks", "direct_action", "drop_one_in"}),
}
CLSACT_INGRESS = "ffff:fff2"
CLSACT_EGRESS = "ffff:fff3"
MAX_DROP_ONE_IN = 0xFFFF  # gact's probability is 1/N with N a u16 (struct tc_gact_p.pval)


def _check(what: str, kind: str, params: Mapping[str, Any], table: Mapping[str, frozenset[str]]) -> None:
    if kind not in table:
        raise PlanError(f"{what}: unknown kind {kind!r}; expected one of {sorted(table)}")
    unknown = set(params) - table[kind]
    if unknown:
        raise PlanError(f"{what} {kind}: unknown parameter(s) {sorted(unknown)}; expected {sorted(table[kind])}")


@dataclass(frozen=True)
class QdiscSpec:
    kind: str
    handle: str
    parent: str = "root"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(f"qdisc {self.handle}", self.kind, self.params, QDISC_PARAMS)


@dataclass(frozen=True)
class ClassSpec:
    kind: str
    classid: str
    parent: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(f"class {self.classid}", self.kind, self.params, CLASS_PARAMS)


@dataclass(frozen=True)
class FilterSpec:
    kind: str
    parent: str
    prio: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(f"filter at {self.parent}", self.kind, self.params, FILTER_PARAMS)
        if "drop_one_in" in self.params:
            n = self.params["drop_one_in"]
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_DROP_ONE_IN or "flowid" in self.params:
                raise PlanError(f"filter {self.kind} at {self.parent}: drop_one_in={n!r}; expected an integer in "
                                f"1..{MAX_DROP_ONE_IN} (drop probability 1/N) and no flowid")


@dataclass(frozen=True)
class TcTree:
    """All traffic control on one interface. The kernel builds root qdiscs, then classes, then the
    leaf qdiscs below classes, then filters."""

    qdiscs: tuple[QdiscSpec, ...] = ()
    classes: tuple[ClassSpec, ...] = ()
    filters: tuple[FilterSpec, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "qdiscs": [dict(kind=q.kind, handle=q.handle, parent=q.parent, params=dict(q.params)) for q in self.qdiscs],
            "classes": [dict(kind=c.kind, classid=c.classid, parent=c.parent, params=dict(c.params)) for c in self.classes],
            "filters": [dict(kind=f.kind, parent=f.parent, prio=f.prio, params=dict(f.params)) for f in self.filters],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "TcTree":
        try:
            return cls(
                qdiscs=tuple(QdiscSpec(**q) for q in raw.get("qdiscs", ())),
                classes=tuple(ClassSpec(**c) for c in raw.get("classes", ())),
                filters=tuple(FilterSpec(**f) for f in raw.get("filters", ())),
            )
        except TypeError as exc:
            raise PlanError(f"tc tree: {exc}") from None


def drop_probability(tree: TcTree) -> float:
    """The probability that a spike crossing `tree`'s filters is dropped at random (every filter
    with drop_one_in N, a u32 gact or the gate itself: 1/N each, independently); 0 if none has one."""
    kept = Fraction(1)
    for f in tree.filters:
        if "drop_one_in" in f.params:
            kept *= Fraction(f.params["drop_one_in"] - 1, f.params["drop_one_in"])
    return float(1 - kept)

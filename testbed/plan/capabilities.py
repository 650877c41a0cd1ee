"""What a kernel (and the machine around it) can realise: the probe's answer, as plain data.

`testbed.kernel.probe` fills a `Capabilities` by creating real objects in a throw-away
namespace; `testbed.plan.profiles` reads it to choose a tc profile. It lives in `plan/`
so the choice can be made (and tested) without pyroute2 or root: plan/ never imports kernel/.

Capability names are one flat namespace shared by the probe and the profiles' ``needs``:
qdisc, classifier, action and device kinds are spelled as ``tc``/``ip`` spell them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from testbed.errors import ProfileError

QDISCS = ("netem", "tbf", "htb", "pfifo", "bfifo", "cbs", "etf", "fq", "fq_codel", "prio", "taprio", "clsact", "ingress")
CLASSIFIERS = ("u32", "bpf", "flower", "matchall")
ACTIONS = ("mirred", "police", "gact")
DEVICES = ("bridge", "veth", "ifb")
NAMESPACES = ("netns",)
# mininet: the `mn` script; mininet_python: `import mininet` works in *this* interpreter;
# ovs_vsctl: Open vSwitch's tools; openvswitch: its kernel datapath module would load;
# uml: user-mode Linux (`linux.uml`), a guest kernel that has netem, cbs, etf, ...
TOOLS = ("tcpdump", "mininet", "mininet_python", "ovs_vsctl", "openvswitch", "uml")

FAMILIES: dict[str, tuple[str, ...]] = {
    "qdisc": QDISCS,
    "classifier": CLASSIFIERS,
    "action": ACTIONS,
    "device": DEVICES,
    "namespace": NAMESPACES,
    "tool": TOOLS,
}
CAPABILITY_NAMES: tuple[str, ...] = tuple(name for names in FAMILIES.values() for name in names)
FAMILY_OF: dict[str, str] = {name: family for family, names in FAMILIES.items() for name in names}


@dataclass(frozen=True)
class Capability:
    """One probed feature: `available` is the verdict, `detail` how it was reached (the kernel's words)."""

    name: str
    available: bool
    detail: str = ""

    def __post_init__(self) -> None:
        if self.name not in FAMILY_OF:
            raise ProfileError(f"capability {self.name!r} is unknown; expected one of {list(CAPABILITY_NAMES)}")

    @property
    def family(self) -> str:
        return FAMILY_OF[self.name]


@dataclass(frozen=True)
class Capabilities:
    """Every capability in `CAPABILITY_NAMES`, each exactly once, plus the kernel it was probed on."""

    kernel_release: str
    items: tuple[Capability, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.items]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        missing = [n for n in CAPABILITY_NAMES if n not in names]
        if duplicated or missing:
            raise ProfileError(
                f"capabilities of kernel {self.kernel_release}: duplicated {duplicated}, not probed {missing}; "
                "each capability must appear exactly once"
            )

    @classmethod
    def from_available(cls, available: Iterable[str], kernel_release: str = "hand-made") -> "Capabilities":
        """Capabilities where exactly the names in `available` are present (for tests and what-if runs)."""
        wanted = set(available)
        unknown = sorted(wanted - set(CAPABILITY_NAMES))
        if unknown:
            raise ProfileError(f"capabilities: unknown name(s) {unknown}; expected names from {list(CAPABILITY_NAMES)}")
        return cls(kernel_release, tuple(Capability(n, n in wanted) for n in CAPABILITY_NAMES))

    def get(self, name: str) -> Capability:
        for item in self.items:
            if item.name == name:
                return item
        raise ProfileError(f"capability {name!r} is unknown; expected one of {list(CAPABILITY_NAMES)}")

    def has(self, name: str) -> bool:
        return self.get(name).available

    def missing(self, names: Iterable[str]) -> tuple[str, ...]:
        """Those of `names` this machine lacks, in the order given."""
        return tuple(n for n in names if not self.has(n))

    @property
    def available(self) -> frozenset[str]:
        return frozenset(c.name for c in self.items if c.available)

    def family(self, family: str) -> tuple[Capability, ...]:
        if family not in FAMILIES:
            raise ProfileError(f"capability family {family!r} is unknown; expected one of {list(FAMILIES)}")
        return tuple(c for c in self.items if c.family == family)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel_release": self.kernel_release,
            "capabilities": {
                family: {c.name: {"available": c.available, "detail": c.detail} for c in self.family(family)}
                for family in FAMILIES
            },
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Capabilities":
        try:
            items = tuple(
                Capability(name, bool(entry["available"]), str(entry.get("detail", "")))
                for family in raw["capabilities"].values()
                for name, entry in family.items()
            )
            return cls(str(raw["kernel_release"]), items)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ProfileError(f"capabilities: malformed record ({exc!r}); expected the form Capabilities.to_dict writes") from None

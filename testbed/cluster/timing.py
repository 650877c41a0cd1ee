"""Inter-host latency: measured at build time, folded into the plan and the simulation.

A part on host H sees every spike of its layer after three legs the single-host fabric does not
have: relay (localhost) → part 0's host, part 0 → H (a trunk, when the layer is split), and
H → relay. Each adds its one-way latency δ to *every* arrival at the part's ports, so:

- T⁺_j and T⁻_j of a neuron (both ports in one part, testbed.plan.placement) shift by the same
  δ, and y_j = T⁺_j − T⁻_j, the only thing the next layer and the decision read, is unchanged:
  the latency cancels in the model; what it can change is which spikes miss the layer's deadline.
- So the simulation adds each port's offset to its arrivals (`port_offsets_us`, given to
  testbed.sim.executor.simulate), before the same deadline the kernel's gates apply: both
  backends of the one plan see the same windows and the same shifted arrivals, and a spike the
  latency pushes past its deadline is lost in both.

δ is half the median round-trip time `ping` measures over the hosts' underlay (all emulated hosts
share this machine's clock; on real servers one-way times cannot be measured without synchronised
clocks, and RTT/2 assumes symmetric links). Jitter is half its robust spread (`ping`). The VXLAN encapsulation
adds a few µs that ping does not see; the tunnel test (tests/cluster) measures the whole path.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass
from typing import Any

import numpy as np

from testbed.cluster.hosts import LOCALHOST, ClusterError, ClusterHosts, ssh_command
from testbed.plan.fabric_plan import FabricPlan
from testbed.plan.placement import Placement

PINGS = 50
PING_INTERVAL_S = "0.01"  # below 0.2 s needs root, which a build has
TIME_RE = re.compile(r" time=([0-9.]+) ms")
MAD_TO_SD = 1.4826  # a normal distribution's sd / median absolute deviation


@dataclass(frozen=True)
class HostLatency:
    """Round-trip time from `src` to `dst` over the underlay (ping: median and robust sd, µs)."""

    src: str
    dst: str
    rtt_us: float
    sd_us: float

    @property
    def one_way_us(self) -> float:
        return self.rtt_us / 2

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "rtt_us": self.rtt_us, "sd_us": self.sd_us,
                "one_way_us": self.one_way_us}


@dataclass(frozen=True)
class ClusterTiming:
    links: tuple[HostLatency, ...]

    def one_way_us(self, a: str, b: str) -> float:
        return 0.0 if a == b else self._link(a, b).one_way_us

    def jitter_us(self, a: str, b: str) -> float:
        return 0.0 if a == b else self._link(a, b).sd_us / 2

    def _link(self, a: str, b: str) -> HostLatency:
        for link in self.links:
            if {link.src, link.dst} == {a, b}:
                return link
        raise ClusterError(f"no latency was measured between {a} and {b}")

    def to_dict(self) -> dict[str, Any]:
        return {"links": [link.to_dict() for link in self.links]}


def _legs(placement: Placement, layer: int, part: int) -> list[tuple[str, str]]:
    parts = placement.layer_parts(layer)
    first, here = parts[0].host, parts[part].host
    return [(LOCALHOST, first), (first, here), (here, LOCALHOST)]


def needed_pairs(placement: Placement) -> list[tuple[str, str]]:
    """The host pairs whose latency the placement's paths cross (each once)."""
    pairs: list[tuple[str, str]] = []
    layers = sorted({p.layer for p in placement.parts})
    for layer in layers:
        for i in range(len(placement.layer_parts(layer))):
            for a, b in _legs(placement, layer, i):
                if a != b and (a, b) not in pairs and (b, a) not in pairs:
                    pairs.append((a, b) if a == LOCALHOST or b != LOCALHOST else (b, a))
    return pairs


def ping(hosts: ClusterHosts, src: str, dst: str) -> HostLatency:
    """PINGS echoes; the median RTT and 1.4826 × the median absolute deviation (a robust sd): on
    a shared machine one stalled echo (milliseconds) would dominate ping's own mean and mdev."""
    argv = ["ping", "-n", "-c", str(PINGS), "-i", PING_INTERVAL_S, hosts.by_name(dst).address]
    source = hosts.by_name(src)
    if not source.is_local:
        argv = ssh_command(hosts, source, *argv)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    rtts = np.array([float(t) for t in TIME_RE.findall(done.stdout)]) * 1e3
    if done.returncode != 0 or rtts.size == 0:
        raise ClusterError(f"latency {src} → {dst}: ping failed ({(done.stderr or done.stdout).strip()[-160:]}); "
                           f"check the hosts with `pi2 doctor --cluster`")
    median = float(np.median(rtts))
    return HostLatency(src, dst, median, MAD_TO_SD * float(np.median(np.abs(rtts - median))))


def measure(hosts: ClusterHosts, placement: Placement) -> ClusterTiming:
    """Latency of every host pair the placement's paths use."""
    return ClusterTiming(tuple(ping(hosts, a, b) for a, b in needed_pairs(placement)))


def part_offset_us(timing: ClusterTiming, placement: Placement, layer: int, part: int) -> tuple[float, float]:
    """(latency, jitter) the part's ports see on every arrival, µs."""
    legs = _legs(placement, layer, part)
    return (sum(timing.one_way_us(a, b) for a, b in legs),
            math.sqrt(sum(timing.jitter_us(a, b) ** 2 for a, b in legs)))


def port_offsets_us(plan: FabricPlan, placement: Placement, timing: ClusterTiming) -> list[np.ndarray]:
    """Per layer, each port's added latency (µs), in plan port order: what the simulation adds."""
    offsets = []
    for layer in plan.layers:
        parts = placement.layer_parts(layer.index)
        per_part = [part_offset_us(timing, placement, layer.index, i)[0] for i in range(len(parts))]
        offsets.append(np.array([per_part[next(i for i, p in enumerate(parts) if port.neuron in p.neurons)]
                                 for port in layer.ports]))
    return offsets


@dataclass(frozen=True, eq=False)
class ClusterLayout:
    """What a cluster build placed where and measured: the placement, the latencies, and each
    port's offset per layer (`port_offsets_us`), for the simulation and the report."""

    placement: Placement
    timing: ClusterTiming
    port_offsets_us: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, plan: FabricPlan, placement: Placement, timing: ClusterTiming) -> "ClusterLayout":
        return cls(placement, timing, tuple(port_offsets_us(plan, placement, timing)))

    def to_dict(self) -> dict[str, Any]:
        layers = sorted({p.layer for p in self.placement.parts})
        return {"placement": self.placement.to_dict(), **self.timing.to_dict(),
                "part_offsets_us": [{"layer": layer, "host": part.host, "neurons": [part.start, part.stop],
                                     "latency_us": round(part_offset_us(self.timing, self.placement, layer, i)[0], 1),
                                     "jitter_us": round(part_offset_us(self.timing, self.placement, layer, i)[1], 1)}
                                    for layer in layers for i, part in enumerate(self.placement.layer_parts(layer))]}

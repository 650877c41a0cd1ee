"""Which host builds which part of a FabricPlan: layers, or groups of a layer's neurons, on hosts.

A `Placement` lists parts: neurons [start, stop) of one layer, on one host (a layer with shared
delay lines is one part: its lines feed all its ports). A part keeps both
input sets (z⁺ and z⁻ ports) of each of its neurons, so whatever a host adds to its ports'
arrivals (the inter-host links: one tunnel in, one out) shifts T⁺ and T⁻ of a neuron alike and
cancels in y = T⁺ − T⁻ (testbed.cluster.timing). Every layer's spikes still come from one
injector (the relay on localhost), so all of a neuron's inputs travel one path: no neuron sees
inputs from two hosts with different link latencies.

`place(plan, hosts)` balances the kernel's work (shaped synapse events per sample) over the hosts,
localhost last (it runs the relay: injector and receiver), splitting a layer whose ports exceed
`max_ports` into neuron groups first. The JSON form (`to_dict`, `placement_from_dict`) is what
`pi2 place` prints and `--placement FILE` reads back, checked against the plan and the hosts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from testbed.errors import PlanError
from testbed.plan.fabric_plan import FabricPlan

PLACEMENT_FORMAT = "pi2-placement"
PART_KEYS = frozenset({"layer", "host", "neurons"})
PLACEMENT_KEYS = frozenset({"format", "hosts", "parts"})
LOCAL = "localhost"


@dataclass(frozen=True)
class Part:
    """Neurons `start` ≤ j < `stop` of layer `layer` (their z⁺ and z⁻ ports), built on `host`."""

    layer: int
    host: str
    start: int
    stop: int

    def __post_init__(self) -> None:
        if self.layer < 0 or not 0 <= self.start < self.stop:
            raise PlanError(f"placement part {self.to_dict()}: need layer ≥ 0 and 0 ≤ start < stop")

    @property
    def neurons(self) -> range:
        return range(self.start, self.stop)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "host": self.host, "neurons": [self.start, self.stop]}


@dataclass(frozen=True)
class Placement:
    """Parts per layer in neuron order; `hosts` in cluster order (hosts[0] is localhost)."""

    hosts: tuple[str, ...]
    parts: tuple[Part, ...]

    def layer_parts(self, layer: int) -> list[Part]:
        return sorted((p for p in self.parts if p.layer == layer), key=lambda p: p.start)

    def host_of(self, layer: int, neuron: int) -> str:
        for part in self.layer_parts(layer):
            if neuron in part.neurons:
                return part.host
        raise PlanError(f"placement: layer {layer} neuron {neuron} is in no part")

    def check(self, plan: FabricPlan) -> "Placement":
        """This placement if it covers every neuron of every layer of `plan` exactly once, on its
        hosts; else PlanError naming the first gap, overlap or unknown host."""
        if not self.hosts or self.hosts[0] != LOCAL or len(set(self.hosts)) != len(self.hosts):
            raise PlanError(f"placement hosts {list(self.hosts)}: expected distinct names, {LOCAL} first")
        unknown = sorted({p.host for p in self.parts} - set(self.hosts))
        if unknown:
            raise PlanError(f"placement: parts on host(s) {unknown} not in the cluster {list(self.hosts)}; "
                            f"fix the placement file or --cluster")
        extra = sorted({p.layer for p in self.parts} - {layer.index for layer in plan.layers})
        if extra:
            raise PlanError(f"placement: layer(s) {extra} are not in the plan (layers 0..{len(plan.layers) - 1})")
        for layer in plan.layers:
            at = 0
            for part in self.layer_parts(layer.index):
                if part.start != at:
                    raise PlanError(f"placement: layer {layer.index} neurons {min(at, part.start)}..{max(at, part.start) - 1} "
                                    f"are {'in no part' if part.start > at else 'in two parts'}; parts must tile "
                                    f"0..{layer.n_neurons - 1} in order")
                at = part.stop
            if at != layer.n_neurons:
                raise PlanError(f"placement: layer {layer.index} has {layer.n_neurons} neurons, its parts cover 0..{at - 1}")
            if layer.lines and len(self.layer_parts(layer.index)) > 1:
                raise PlanError(f"placement: layer {layer.index} has shared delay lines, which feed all its ports from "
                                f"one host: it cannot be split over hosts; to split it, compile with --delay-lines "
                                f"per-synapse")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLACEMENT_FORMAT, "hosts": list(self.hosts),
                "parts": [p.to_dict() for p in sorted(self.parts, key=lambda p: (p.layer, p.start))]}

    def describe(self) -> list[str]:
        """One line per part, e.g. ``layer 0 neurons 0..15 (32 ports) on e1``."""
        return [f"layer {p.layer} neurons {p.start}..{p.stop - 1} ({2 * (p.stop - p.start)} ports) on {p.host}"
                for p in sorted(self.parts, key=lambda p: (p.layer, p.start))]


def _part(raw: Any, where: str) -> Part:
    if not isinstance(raw, dict) or set(raw) != PART_KEYS:
        raise PlanError(f"{where}: expected an object with keys {sorted(PART_KEYS)}, got {str(raw)[:80]}")
    neurons = raw["neurons"]
    if (type(raw["layer"]) is not int or not isinstance(raw["host"], str) or not isinstance(neurons, list)
            or len(neurons) != 2 or not all(type(n) is int for n in neurons)):
        raise PlanError(f"{where}: layer must be an integer, host a string, neurons [start, stop) two integers")
    return Part(raw["layer"], raw["host"], neurons[0], neurons[1])


def placement_from_dict(raw: Any, where: str = "placement") -> Placement:
    if not isinstance(raw, dict) or not set(raw) <= PLACEMENT_KEYS or raw.get("format") != PLACEMENT_FORMAT:
        raise PlanError(f"{where}: expected an object with format {PLACEMENT_FORMAT!r}, hosts and parts "
                        f"(as `pi2 place` prints)")
    hosts, parts = raw.get("hosts"), raw.get("parts")
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts) or not isinstance(parts, list):
        raise PlanError(f"{where}: hosts must be a list of names and parts a list of parts")
    return Placement(tuple(hosts), tuple(_part(p, f"{where}.parts[{i}]") for i, p in enumerate(parts)))


def load_placement(path: Path, plan: FabricPlan, hosts: Sequence[str]) -> Placement:
    """A placement file, checked against `plan` and the cluster's `hosts`."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"placement file {path}: {exc}; write it with `pi2 place … > {path}`") from None
    placement = placement_from_dict(raw, f"placement file {path}")
    if list(placement.hosts) != list(hosts):
        raise PlanError(f"placement file {path}: hosts {list(placement.hosts)} differ from --cluster {list(hosts)}")
    return placement.check(plan)


def part_cost(plan: FabricPlan, layer: int, start: int, stop: int) -> int:
    """Kernel work of a part per sample: the synapse events its ports shape (one classified,
    delayed packet each, kernel-notes.md: ≈10 µs of kernel CPU apiece)."""
    return sum(len(p.synapses) for p in plan.layers[layer].ports if start <= p.neuron < stop)


def place(plan: FabricPlan, hosts: Sequence[str], max_ports: int | None = None) -> Placement:
    """A placement of `plan` on `hosts` (module docstring): layers with more than `max_ports`
    ports split into equal neuron groups, then parts, largest first, each on the least loaded
    host (ties: the later host, so localhost takes fabric work last)."""
    hosts = tuple(hosts)
    if max_ports is not None and max_ports < 2:
        raise PlanError(f"max_ports {max_ports}: a part holds whole neurons, 2 ports each; expected ≥ 2")
    pieces = []
    for layer in plan.layers:
        groups = 1 if max_ports is None else math.ceil(2 * layer.n_neurons / max_ports)
        groups = min(groups, layer.n_neurons)
        bounds = [round(g * layer.n_neurons / groups) for g in range(groups + 1)]
        pieces += [(layer.index, a, b) for a, b in zip(bounds, bounds[1:])]
    load = {host: 0 for host in hosts}
    parts = []
    for layer, a, b in sorted(pieces, key=lambda piece: -part_cost(plan, *piece)):
        host = min(reversed(hosts), key=lambda h: load[h])
        load[host] += part_cost(plan, layer, a, b)
        parts.append(Part(layer, host, a, b))
    return Placement(hosts, tuple(parts)).check(plan)

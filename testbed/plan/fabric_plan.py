"""The FabricPlan: every object, delay, gate and time window of a π² network in a packet fabric.

One plan drives two executors: `testbed.sim` runs it event by event in-process, and the
kernel backends (`testbed.fabric`) build it from namespaces, veths, bridges and qdiscs. A
plan is plain, versioned JSON (`to_dict`/`plan_from_dict`) validated on load.

Per layer l (n inputs, m neurons), the data path is::

    host:in<l> ──► switch sw<l> (bridge: flood = broadcast) ──► 2m neuron ports
    each port  = a veth pair: switch end s<l>n<j><p|m> carries the delay classes on egress
                 (one class per synapse event source (i, sign)), host end l<l>n<j><p|m> carries
                 the first-K gate (cls_bpf on clsact ingress) and is read by the relay.

Interface names are logical suffixes; the builder prefixes ``p2<run id>``.
Times: `tau_us` maps one model unit to microseconds; layer windows are in µs from the layer's
model time zero, its origin: the slot's base plus the longest of its events' leads. An event of
model time t with lead a is sent at origin + t·τ − a, and each of its delay classes holds a longer
(testbed.plan.compiler explains why), so it arrives at origin + t·τ + the model's delay.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from testbed.errors import PlanError
from testbed.plan.tc import TcTree, drop_probability

PLAN_FORMAT = "pi2-fabric-plan"
PLAN_VERSION = 3  # 2: per-event leads; 3: gates without drop_primers, netem leaves with limit_packets
SIGN_PLUS, SIGN_MINUS = 0, 1  # z⁺ port / z⁻ port; also t⁺ / t⁻ events on the wire


def event_index(source: int, sign: int, n_inputs: int) -> int:
    """Where event (source, sign) stands among a layer's 2n events, in the one order plans and
    calibration list them: t⁺ of inputs 0..n−1, then t⁻ of inputs 0..n−1."""
    return sign * n_inputs + source


@dataclass(frozen=True)
class Synapse:
    """One delay class on a neuron port: events (source, sign) are delayed by `delay_us`.

    `target_us` is the model's delay (τ·d); `delay_us` what the profile realises (rate
    granularity, primer arithmetic). `classid` None means unshaped (target below the profile's
    smallest delay): the event passes at once.
    """

    source: int
    sign: int
    target_us: float
    delay_us: float
    classid: str | None

    def __post_init__(self) -> None:
        if self.sign not in (SIGN_PLUS, SIGN_MINUS) or self.source < 0:
            raise PlanError(f"synapse ({self.source}, {self.sign}): source must be ≥ 0 and sign 0 or 1")
        if not (self.delay_us >= 0 and self.target_us >= 0):
            raise PlanError(f"synapse ({self.source}, {self.sign}): delays must be ≥ 0 µs, got {self.delay_us}")


@dataclass(frozen=True)
class NeuronPort:
    """One input set of a π²_K neuron: emits the mean of its K earliest arrivals."""

    layer: int
    neuron: int
    sign: int  # SIGN_PLUS: z⁺, SIGN_MINUS: z⁻
    k: int
    switch_if: str
    host_if: str
    synapses: tuple[Synapse, ...]
    delay_tc: TcTree  # on switch_if egress
    gate_tc: TcTree  # on host_if ingress

    def __post_init__(self) -> None:
        fan_in = len(self.synapses)
        if not 1 <= self.k <= fan_in:
            raise PlanError(f"port {self.host_if}: k must be in 1..{fan_in}, got {self.k}")


@dataclass(frozen=True)
class LayerPlan:
    """One π²_K layer as a switch, its ports and its time window."""

    index: int
    n_inputs: int
    n_neurons: int
    k: int
    switch: str
    inject_if: str
    window_us: float  # deadline: arrivals later than this after the layer's origin are timed out
    offset_mk: float  # causal offset M_K (model units) measured on the calibration data
    ports: tuple[NeuronPort, ...]
    leads_us: tuple[float, ...]  # per event (t⁺ of inputs 0..n−1, then t⁻): sent this long before its time

    def __post_init__(self) -> None:
        if len(self.ports) != 2 * self.n_neurons:
            raise PlanError(f"layer {self.index}: {len(self.ports)} ports for {self.n_neurons} neurons (expected 2 per neuron)")
        if not self.window_us > 0:
            raise PlanError(f"layer {self.index}: window_us must be > 0, got {self.window_us}")
        if len(self.leads_us) != 2 * self.n_inputs or not all(lead >= 0 for lead in self.leads_us):
            raise PlanError(f"layer {self.index}: leads_us needs {2 * self.n_inputs} values ≥ 0 µs (one per event), "
                            f"got {len(self.leads_us)}")

    @property
    def origin_us(self) -> float:
        """Where the layer's model time zero lies after its slot's base: the longest lead, so
        that no event is sent before the slot begins."""
        return max(self.leads_us)

    def lead_us(self, source: int, sign: int) -> float:
        return self.leads_us[event_index(source, sign, self.n_inputs)]

    def port_delays_us(self) -> np.ndarray:
        """(ports, n, 2) realised delay of event (i, sign) on each port; inf where the port drops it."""
        out = np.full((len(self.ports), self.n_inputs, 2), np.inf)
        for q, port in enumerate(self.ports):
            for syn in port.synapses:
                if syn.source >= self.n_inputs:
                    raise PlanError(f"layer {self.index}: a synapse of port {port.switch_if} names source "
                                    f"{syn.source}; the layer has {self.n_inputs} inputs")
                out[q, syn.source, syn.sign] = syn.delay_us
        return out

    def flood_offsets_us(self, copy_us: float) -> np.ndarray:
        """(ports,) when each port's copy of an event leaves the switch, after the first copy, for a
        bridge taking `copy_us` per copy (`Timing.flood_copy_us`).

        Both backends attach a layer's ports to its bridge in plan order, and Linux puts a new port
        at the head of the bridge's port list, which a flood walks from the head: port P − 1 is
        served first (measured: with one event at a time, a primer reaches port q ≈4 µs per
        later port after the event's TX stamp).
        """
        return (len(self.ports) - 1 - np.arange(len(self.ports))) * copy_us


@dataclass(frozen=True)
class Timing:
    """How samples are paced through the fabric."""

    tau_us: float  # one model time unit
    period_us: float  # spacing of consecutive samples' injections (pipelined across layers)
    relay_us: float  # time a relay gets between a layer's deadline and the next layer's base time
    flood_copy_us: float  # bridge flood: each port's copy leaves this long after the one before (testbed.sim)

    def __post_init__(self) -> None:
        for name in ("tau_us", "period_us"):
            if not getattr(self, name) > 0:
                raise PlanError(f"timing.{name} must be > 0 µs, got {getattr(self, name)}")
        if self.relay_us < 0 or self.flood_copy_us < 0:
            raise PlanError("timing.relay_us and timing.flood_copy_us must be ≥ 0 µs")


@dataclass(frozen=True)
class Packets:
    """Frame sizes on the wire (bytes as qdiscs count them: Ethernet header included)."""

    spike_bytes: int
    primer_bytes: int  # 0: the delay realisation needs no primer (netem)


@dataclass(frozen=True)
class FabricPlan:
    """A compiled π² network: the single source of truth for the simulator and the kernel."""

    profile: str
    delay_kind: str  # realisation of delay: "htb-primer" or "netem"
    gate_kind: str  # realisation of the first-K gate: "bpf-first-k"
    constants: Mapping[str, float]  # t0, c, s
    network: Mapping[str, Any]  # path, sha256, k, bits, input_shape
    timing: Timing
    packets: Packets
    layers: tuple[LayerPlan, ...]
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if self.version != PLAN_VERSION:
            raise PlanError(f"plan version {self.version}: this pi2 reads version {PLAN_VERSION}; recompile it with "
                            "`pi2 compile`")
        if not self.layers:
            raise PlanError("a plan needs at least one layer")
        for i, layer in enumerate(self.layers):
            if layer.index != i:
                raise PlanError(f"layer {i} has index {layer.index}")
            if i and layer.n_inputs != self.layers[i - 1].n_neurons:
                raise PlanError(f"layer {i} has {layer.n_inputs} inputs but layer {i - 1} has {self.layers[i - 1].n_neurons} neurons")

    @property
    def packets_per_sample(self) -> dict[str, int]:
        """Frames one sample puts through the fabric: injected, flooded to ports, dropped by the
        ports' synapse filters (pruned synapses), and shaped."""
        per_event = 2 if self.packets.primer_bytes else 1
        injected = sum(2 * layer.n_inputs * per_event for layer in self.layers)
        port_copies = sum(2 * layer.n_inputs * per_event * len(layer.ports) for layer in self.layers)
        kept = sum(len(p.synapses) for layer in self.layers for p in layer.ports)
        shaped = sum(per_event * sum(s.classid is not None for p in layer.ports for s in p.synapses) for layer in self.layers)
        return {"injected": injected, "port_copies": port_copies, "pruned": port_copies - per_event * kept,
                "shaped": shaped}

    def summary(self) -> dict[str, Any]:
        """What `pi2 compile --show` prints: objects, packets and time windows."""
        layers = []
        for layer in self.layers:
            classes = sum(len(p.delay_tc.classes) for p in layer.ports)
            layers.append({"layer": layer.index, "inputs": layer.n_inputs, "neurons": layer.n_neurons, "k": layer.k,
                           "ports": len(layer.ports), "classes": classes,
                           "pruned": 2 * layer.n_inputs * len(layer.ports) - sum(len(p.synapses) for p in layer.ports),
                           "filters": sum(len(p.delay_tc.filters) for p in layer.ports),
                           "gates": sum(f.kind == "bpf" for p in layer.ports for f in p.gate_tc.filters),
                           "loss": max(drop_probability(p.gate_tc) for p in layer.ports),
                           "window_us": layer.window_us, "origin_us": layer.origin_us,
                           "offset_mk": layer.offset_mk})
        return {"profile": self.profile, "delay": self.delay_kind, "gate": self.gate_kind,
                "tau_us": self.timing.tau_us, "period_us": self.timing.period_us,
                "samples_per_s_bound": 1e6 / self.timing.period_us,
                "namespaces": 2, "bridges": len(self.layers),
                "veth_pairs": sum(1 + len(layer.ports) for layer in self.layers),
                "packets_per_sample": self.packets_per_sample, "layers": layers, "network": dict(self.network)}

    def to_dict(self) -> dict[str, Any]:
        out = {"format": PLAN_FORMAT, "version": self.version, "profile": self.profile,
               "delay_kind": self.delay_kind, "gate_kind": self.gate_kind,
               "constants": dict(self.constants), "network": dict(self.network),
               "timing": asdict(self.timing), "packets": asdict(self.packets), "layers": []}
        for layer in self.layers:
            ports = []
            for p in layer.ports:
                ports.append({"neuron": p.neuron, "sign": p.sign, "k": p.k, "switch_if": p.switch_if,
                              "host_if": p.host_if,
                              "synapses": [[s.source, s.sign, s.target_us, s.delay_us, s.classid] for s in p.synapses],
                              "delay_tc": p.delay_tc.to_dict(), "gate_tc": p.gate_tc.to_dict()})
            out["layers"].append({"index": layer.index, "n_inputs": layer.n_inputs, "n_neurons": layer.n_neurons,
                                  "k": layer.k, "switch": layer.switch, "inject_if": layer.inject_if,
                                  "window_us": layer.window_us, "offset_mk": layer.offset_mk,
                                  "leads_us": list(layer.leads_us), "ports": ports})
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")))
        return path


def _get(raw: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(raw, Mapping) or key not in raw:
        raise PlanError(f"{where}: missing field '{key}'")
    return raw[key]


def plan_from_dict(raw: Mapping[str, Any], where: str = "plan") -> FabricPlan:
    """Validate and build a plan from its JSON form."""
    if _get(raw, "format", where) != PLAN_FORMAT:
        raise PlanError(f"{where}: field 'format' = {raw.get('format')!r}; expected {PLAN_FORMAT!r} (make one with `pi2 compile`)")
    try:
        layers = []
        for li, lraw in enumerate(_get(raw, "layers", where)):
            lw = f"{where}: layers[{li}]"
            ports = []
            for pi, praw in enumerate(_get(lraw, "ports", lw)):
                pw = f"{lw}.ports[{pi}]"
                synapses = tuple(Synapse(int(s[0]), int(s[1]), float(s[2]), float(s[3]), s[4])
                                 for s in _get(praw, "synapses", pw))
                ports.append(NeuronPort(li, int(_get(praw, "neuron", pw)), int(_get(praw, "sign", pw)),
                                        int(_get(praw, "k", pw)), str(_get(praw, "switch_if", pw)),
                                        str(_get(praw, "host_if", pw)), synapses,
                                        TcTree.from_dict(_get(praw, "delay_tc", pw)),
                                        TcTree.from_dict(_get(praw, "gate_tc", pw))))
            layers.append(LayerPlan(int(_get(lraw, "index", lw)), int(_get(lraw, "n_inputs", lw)),
                                    int(_get(lraw, "n_neurons", lw)), int(_get(lraw, "k", lw)),
                                    str(_get(lraw, "switch", lw)), str(_get(lraw, "inject_if", lw)),
                                    float(_get(lraw, "window_us", lw)), float(_get(lraw, "offset_mk", lw)),
                                    tuple(ports), tuple(float(a) for a in _get(lraw, "leads_us", lw))))
        return FabricPlan(str(_get(raw, "profile", where)), str(_get(raw, "delay_kind", where)),
                          str(_get(raw, "gate_kind", where)), dict(_get(raw, "constants", where)),
                          dict(_get(raw, "network", where)), Timing(**_get(raw, "timing", where)),
                          Packets(**_get(raw, "packets", where)), tuple(layers), int(_get(raw, "version", where)))
    except (TypeError, ValueError, IndexError) as exc:
        raise PlanError(f"{where}: malformed plan: {exc}") from None


def load_plan(path: str | Path) -> FabricPlan:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{path}: no such plan file (make one with `pi2 compile NET -o {path.name}`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: not a JSON plan: {exc}") from None
    return plan_from_dict(raw, str(path))

r"""Spikes to joules: an analytical energy model of π² and of conventional neuromorphic chips.

Workload (per inference; for the brain, per second of activity)
---------------------------------------------------------------
A π²_K layer ℓ with n_ℓ inputs and m_ℓ neurons receives E_ℓ = 2·n_ℓ events (t⁺ and t⁻ of every
input; a zero re-encodes at T0, so in the dense case every event is sent) and broadcasts each to
F_ℓ = 2·m_ℓ neuron ports (z⁺ and z⁻ of every neuron)::

    A_ℓ = E_ℓ · F_ℓ  (= 4·n_ℓ·m_ℓ synaptic arrivals),   kept_ℓ = min(A_ℓ, 2·m_ℓ·K_ℓ)

Measured statistics (from the model's trace or a kernel run) replace E_ℓ; arrivals follow.

Packets and hops
----------------
Bits per event b: the testbed frame, b_frame = 8·SPIKE_FRAME_BYTES = 496 bits, or the minimal
address-event packet b_aer = ⌈log₂(S·σ)⌉ + h, with S distinct sources, σ = 2 if events carry a
sign (t⁺/t⁻) else 1, and h header bits. One event reaches its F ports through a multicast tree of
radix-R switches: s₀ = F, s_{j+1} = ⌈s_j/R⌉ down to 1 switch, and it crosses::

    L(F) = F + Σ_{j≥1} s_j  links     (hops from source to a port: depth + 1)
    L(F) − 1               switch egress copies (every link but the source's uplink)

π² (the interconnect is the computation)
----------------------------------------
With e_bit the link energy per bit, e_pkt the switch energy per packet copy, P_port a port's
fixed power, B its line rate and u its mean utilisation (so each bit carries P_port/(B·u) of
fixed energy)::

    E_link   = Σ_ℓ E_ℓ · L(F_ℓ) · b · e_bit
    E_switch = Σ_ℓ E_ℓ · (L(F_ℓ) − 1) · e_pkt
    E_static = Σ_ℓ E_ℓ · L(F_ℓ) · b · P_port / (B·u)
    E_useful = Σ_ℓ E_ℓ · L(F_ℓ) · b_aer · e_bit        (moving the minimal packet is the computation)
    η_π²     = E_useful / (E_link + E_switch + E_static)

so η_π² → 1 as e_pkt → 0, P_port/(B·u) → 0 and b → b_aer; η rises with B.

Conventional neuromorphic chips (compute + spike routing)
---------------------------------------------------------
The same workload: every arrival is one synaptic operation (SOP) at e_sop. Neurons (and input
sources) are placed at random on C = ⌈N/N_chip⌉ chips; an event whose targets are f neurons reaches
D = (C−1)·(1 − (1 − 1/C)^f) other chips, one link each (a lower bound on hops, in their favour),
as minimal AER packets over the same interconnect::

    E_compute = Σ_ℓ A_ℓ · e_sop
    E_route   = Σ_ℓ E_ℓ · D_ℓ · (b_aer · (e_bit + P_port/(B·u)) + e_pkt)
    η_conv    = E_compute / (E_compute + E_route)

(an upper bound: the published e_sop includes each chip's own on-chip routing and memory).

Power at an inference rate r is P = E_total · r.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from testbed.energy.platforms import PACKETS, BrainFigures, Neuromorphic, PlatformTable
from testbed.errors import ModelError
from testbed.plan.wire import SPIKE_FRAME_BYTES

PJ = 1e-12  # J per pJ
FRAME_BITS = 8 * SPIKE_FRAME_BYTES


@dataclass(frozen=True)
class LayerTraffic:
    """One layer's traffic per inference: events in, ports each reaches, arrivals kept by the gates."""

    name: str
    events: float  # packets injected into the layer (2n for a dense π² layer)
    fanout_ports: int  # ports one event reaches (2m: z⁺ and z⁻ of each neuron)
    fanout_neurons: int  # distinct neurons one event reaches (m): what chip placement sees
    n_neurons: int
    kept_arrivals: float  # arrivals among the K earliest of their port (≤ arrivals)

    def __post_init__(self) -> None:
        if not self.events >= 0:
            raise ModelError(f"layer {self.name}: events per inference must be ≥ 0, got {self.events!r}")
        if self.fanout_ports < 1 or self.fanout_neurons < 1 or self.n_neurons < 1:
            raise ModelError(f"layer {self.name}: fan-out and neurons must be ≥ 1, got "
                             f"{self.fanout_ports} ports, {self.fanout_neurons} neurons, {self.n_neurons} in layer")
        if not 0 <= self.kept_arrivals <= self.arrivals:
            raise ModelError(f"layer {self.name}: kept arrivals {self.kept_arrivals} must be in 0..{self.arrivals}")

    @property
    def arrivals(self) -> float:
        """Synaptic arrival events: every event reaches every port it is broadcast to."""
        return self.events * self.fanout_ports

    @property
    def kept_fraction(self) -> float:
        return self.kept_arrivals / self.arrivals if self.arrivals else 0.0


@dataclass(frozen=True)
class Workload:
    """The traffic a network (or the brain) puts on a fabric per inference (or per second)."""

    name: str
    layers: tuple[LayerTraffic, ...]
    n_sources: int  # distinct event sources: the AER address space
    signed: bool  # events carry a t⁺/t⁻ sign bit
    n_input_sources: int  # sources outside the layers' neurons (the network's inputs)
    per: str = "inference"  # "inference" or "second"
    assumptions: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layers:
            raise ModelError(f"workload {self.name}: needs at least one layer")
        if self.n_sources < 1 or self.n_input_sources < 0:
            raise ModelError(f"workload {self.name}: n_sources must be ≥ 1 and n_input_sources ≥ 0")
        if self.per not in ("inference", "second"):
            raise ModelError(f"workload {self.name}: per must be 'inference' or 'second', got {self.per!r}")

    @property
    def events(self) -> float:
        return sum(layer.events for layer in self.layers)

    @property
    def arrivals(self) -> float:
        return sum(layer.arrivals for layer in self.layers)

    @property
    def n_neurons(self) -> int:
        return sum(layer.n_neurons for layer in self.layers)

    def with_measured(self, events: Mapping[int, float]) -> "Workload":
        """Replace events per inference of the layers named by index (measured spike statistics).

        The simulator or a kernel run counts the events that actually entered each layer; arrivals
        scale with them, and kept arrivals can only shrink.
        """
        layers = list(self.layers)
        for index, count in events.items():
            if not 0 <= index < len(layers):
                raise ModelError(f"measured events name layer {index}; workload {self.name} has layers 0..{len(layers) - 1}")
            old = layers[index]
            new = replace(old, events=float(count), kept_arrivals=0.0)
            layers[index] = replace(new, kept_arrivals=min(old.kept_arrivals, new.arrivals))
        return replace(self, layers=tuple(layers), assumptions={**self.assumptions, "measured_layers": sorted(events)})


def workload_from_shapes(name: str, shapes: Sequence[tuple[int, int, int]]) -> Workload:
    """A dense π² network's workload from its layer shapes (n inputs, m neurons, K)."""
    layers = []
    for i, (n, m, k) in enumerate(shapes):
        if n < 1 or m < 1 or not 1 <= k <= 2 * n:
            raise ModelError(f"layer {i}: need n ≥ 1, m ≥ 1 and K in 1..2n, got n={n}, m={m}, K={k}")
        layers.append(LayerTraffic(name=f"L{i} {n}→{m} K={k}", events=2.0 * n, fanout_ports=2 * m,
                                   fanout_neurons=m, n_neurons=m, kept_arrivals=float(min(4 * n * m, 2 * m * k))))
    sources = sum(n for n, _, _ in shapes)
    return Workload(name=name, layers=tuple(layers), n_sources=sources, signed=True, n_input_sources=shapes[0][0],
                    assumptions={"events": "dense: every input sends t⁺ and t⁻ (a zero times out at T0)"})


def workload_from_arch(arch: str, ks: Sequence[int]) -> Workload:
    """A dense workload from an architecture string like ``mlp:784-500-10`` and one K per layer."""
    kind, _, sizes = arch.partition(":")
    try:
        widths = [int(w) for w in sizes.split("-")]
    except ValueError:
        widths = []
    if kind != "mlp" or len(widths) < 2 or min(widths) < 1:
        raise ModelError(f"workload {arch!r}: expected 'mlp:N0-N1-…-NL' with positive widths, e.g. 'mlp:784-500-10'")
    if len(ks) != len(widths) - 1:
        raise ModelError(f"workload {arch}: has {len(widths) - 1} layers but {len(ks)} K values were given ({list(ks)})")
    return workload_from_shapes(arch, list(zip(widths[:-1], widths[1:], ks)))


def workload_from_network(net: object, name: str) -> Workload:
    """The workload of a `Pi2Network` from its topology (`layers[i].n_inputs`, `.n_neurons`, `.k`).

    Convolution layers count arrivals exactly (4·fan-in·neurons) but as if each receptive-field
    input were broadcast to all of the layer's neurons, which overstates multicast sharing.
    """
    shapes = [(int(layer.n_inputs), int(layer.n_neurons), int(layer.k)) for layer in net.layers]
    return workload_from_shapes(name, shapes)


def events_from_traces(traces: Sequence[object]) -> dict[int, float]:
    """Measured events per layer per sample from `Pi2Network.trace`: input times that arrived (finite)."""
    counts = {}
    for i, trace in enumerate(traces):
        sent = np.isfinite(trace.t_plus).reshape(len(trace.t_plus), -1).sum(axis=1)
        sent = sent + np.isfinite(trace.t_minus).reshape(len(trace.t_minus), -1).sum(axis=1)
        counts[i] = float(sent.mean())
    return counts


def brain_workload(brain: BrainFigures, neurons: float | None = None, synapses_per_neuron: float | None = None,
                   rate_hz: float | None = None, differential: bool = False) -> Workload:
    """One second of brain-scale activity: each spike is one event delivered to every synapse.

    `differential` uses π²'s encoding instead: two events per spike, two ports per synapse (×4 arrivals).
    """
    n = brain.neurons if neurons is None else neurons
    s = brain.synapses_per_neuron if synapses_per_neuron is None else synapses_per_neuron
    r = brain.rate_hz if rate_hz is None else rate_hz
    if not (n >= 1 and s >= 1 and r > 0):
        raise ModelError(f"brain workload needs neurons ≥ 1, synapses per neuron ≥ 1 and rate > 0 Hz; got {n}, {s}, {r}")
    sign = 2 if differential else 1
    layer = LayerTraffic(name="brain", events=n * r * sign, fanout_ports=int(round(s)) * sign,
                         fanout_neurons=int(round(s)), n_neurons=int(n), kept_arrivals=n * r * sign * int(round(s)) * sign)
    return Workload(name="brain", layers=(layer,), n_sources=int(n), signed=differential, n_input_sources=0,
                    per="second", assumptions={"neurons": n, "synapses_per_neuron": s, "rate_hz": r,
                                               "differential": differential,
                                               "synaptic_events_per_s": n * s * r})


@dataclass(frozen=True)
class Fabric:
    """The interconnect's figures, resolved from a generation (and any overrides)."""

    name: str
    link: str
    pj_per_bit: float
    bandwidth_gbps: float
    packet: str  # "frame" (the testbed's 62 B frame) or "aer" (minimal address-event packet)
    switch_pj_per_packet: float
    static_w_per_port: float
    switch_radix: int
    utilisation: float
    aer_header_bits: int

    def __post_init__(self) -> None:
        if self.packet not in PACKETS:
            raise ModelError(f"fabric {self.name}: packet must be one of {PACKETS}, got {self.packet!r}")
        if not (self.pj_per_bit >= 0 and self.bandwidth_gbps > 0):
            raise ModelError(f"fabric {self.name}: need pJ/bit ≥ 0 and bandwidth > 0 Gb/s, "
                             f"got {self.pj_per_bit} pJ/bit, {self.bandwidth_gbps} Gb/s")
        if self.switch_pj_per_packet < 0 or self.static_w_per_port < 0:
            raise ModelError(f"fabric {self.name}: switch pJ/packet and static W/port must be ≥ 0")
        if self.switch_radix < 2 or not 0 < self.utilisation <= 1:
            raise ModelError(f"fabric {self.name}: need switch radix ≥ 2 and utilisation in (0, 1]")

    @property
    def static_pj_per_bit(self) -> float:
        """A port's fixed power spread over the bits it carries: P_port / (B·u), in pJ/bit."""
        return self.static_w_per_port / (self.bandwidth_gbps * 1e9 * self.utilisation) / PJ


def fabric(table: PlatformTable, generation: str, link: str | None = None, **overrides: object) -> Fabric:
    """A generation's fabric; `link` swaps its link technology; overrides set single figures (None: keep)."""
    gen = table.generation(generation)
    tech = table.link(gen.link if link is None else link)
    base = Fabric(name=gen.name if link is None else f"{gen.name}+{tech.name}", link=tech.name,
                  pj_per_bit=tech.pj_per_bit, bandwidth_gbps=tech.bandwidth_gbps, packet=gen.packet,
                  switch_pj_per_packet=gen.switch_pj_per_packet, static_w_per_port=gen.static_w_per_port,
                  switch_radix=table.fabric.switch_radix, utilisation=table.fabric.utilisation,
                  aer_header_bits=table.packets.aer_header_bits)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def aer_bits(workload: Workload, header_bits: int) -> int:
    """Minimal address-event packet: ⌈log₂(sources × signs)⌉ address bits plus the header."""
    addresses = workload.n_sources * (2 if workload.signed else 1)
    return max(1, math.ceil(math.log2(addresses))) + header_bits


def packet_bits(workload: Workload, fab: Fabric) -> int:
    return FRAME_BITS if fab.packet == "frame" else aer_bits(workload, fab.aer_header_bits)


def tree_levels(fanout: int, radix: int) -> list[int]:
    """Switches per level of the multicast tree reaching `fanout` ports, leaves first, root last."""
    levels, width = [], fanout
    while True:
        width = math.ceil(width / radix)
        levels.append(width)
        if width == 1:
            return levels


def tree_links(fanout: int, radix: int) -> int:
    """Links one multicast event crosses: L(F) = F + Σ switches (each switch's incoming link)."""
    return fanout + sum(tree_levels(fanout, radix))


@dataclass(frozen=True)
class EnergyBreakdown:
    """Energy per inference (J) of one system on one workload, split by where it goes."""

    system: str
    kind: str  # "pi2" or "conventional"
    compute_j: float
    link_j: float
    switch_j: float
    static_j: float
    useful_j: float
    bits_per_event: int

    @property
    def total_j(self) -> float:
        return self.compute_j + self.link_j + self.switch_j + self.static_j

    @property
    def eta(self) -> float:
        """Effective energy utilisation: useful computation energy / total energy."""
        return self.useful_j / self.total_j if self.total_j > 0 else 1.0

    def to_dict(self, rate_hz: float) -> dict[str, object]:
        return {"system": self.system, "kind": self.kind, "energy_j": self.total_j, "power_w": self.total_j * rate_hz,
                "eta": self.eta, "compute_j": self.compute_j, "link_j": self.link_j, "switch_j": self.switch_j,
                "static_j": self.static_j, "useful_j": self.useful_j, "bits_per_event": self.bits_per_event}


def pi2_energy(workload: Workload, fab: Fabric) -> EnergyBreakdown:
    """π²: the fabric's link, switch and fixed energy is all there is; moving minimal packets is useful."""
    bits, minimal = packet_bits(workload, fab), aer_bits(workload, fab.aer_header_bits)
    links = sum(layer.events * tree_links(layer.fanout_ports, fab.switch_radix) for layer in workload.layers)
    copies = links - workload.events
    return EnergyBreakdown(system=f"π² {fab.name}", kind="pi2", compute_j=0.0,
                           link_j=links * bits * fab.pj_per_bit * PJ,
                           switch_j=copies * fab.switch_pj_per_packet * PJ,
                           static_j=links * bits * fab.static_pj_per_bit * PJ,
                           useful_j=links * minimal * fab.pj_per_bit * PJ, bits_per_event=bits)


def chips_reached(chips: int, targets: int) -> float:
    """Expected chips other than the source's holding ≥ 1 of `targets` randomly placed neurons."""
    if chips <= 1:
        return 0.0
    return (chips - 1) * -math.expm1(targets * math.log1p(-1.0 / chips))


def conventional_energy(workload: Workload, platform: Neuromorphic, fab: Fabric) -> EnergyBreakdown:
    """A conventional chip: e_sop per synaptic arrival plus AER routing between its chips."""
    chips = math.ceil((workload.n_neurons + workload.n_input_sources) / platform.neurons_per_chip)
    bits = aer_bits(workload, fab.aer_header_bits)
    hops = sum(layer.events * chips_reached(chips, layer.fanout_neurons) for layer in workload.layers)
    compute = workload.arrivals * platform.pj_per_sop * PJ
    return EnergyBreakdown(system=platform.name, kind="conventional", compute_j=compute,
                           link_j=hops * bits * fab.pj_per_bit * PJ, switch_j=hops * fab.switch_pj_per_packet * PJ,
                           static_j=hops * bits * fab.static_pj_per_bit * PJ, useful_j=compute, bits_per_event=bits)


def compare(workload: Workload, table: PlatformTable, fab: Fabric) -> list[EnergyBreakdown]:
    """π² on `fab` and every conventional platform routing over the same interconnect."""
    return [pi2_energy(workload, fab), *(conventional_energy(workload, p, fab) for p in table.neuromorphic)]


def sweep(workload: Workload, table: PlatformTable, fab: Fabric, knob: str,
          values: Sequence[float]) -> list[dict[str, object]]:
    """Energy and η of every system as one fabric figure (`pj_per_bit` or `bandwidth_gbps`) varies."""
    if knob not in ("pj_per_bit", "bandwidth_gbps"):
        raise ModelError(f"sweep knob must be 'pj_per_bit' or 'bandwidth_gbps', got {knob!r}")
    rows = []
    for value in values:
        results = compare(workload, table, replace(fab, **{knob: float(value)}))
        rows.append({knob: float(value), "systems": {r.system: {"energy_j": r.total_j, "eta": r.eta} for r in results}})
    return rows

"""The FabricPlan: every object, delay, gate and time window of a π² network in a packet fabric.

One plan drives two executors: `testbed.sim` evaluates it in-process, and the kernel backends
(`testbed.fabric`) build it from namespaces, veths, bridges and qdiscs. A plan is plain, versioned
JSON (`to_dict`/`plan_from_dict`) validated on load.

Per layer l (n inputs, m neurons), a plan's `delay_lines` chooses one of two data paths. Both end
in the same 2m neuron ports: a veth pair per port whose host end l<l>n<j><p|m> carries the port's
π²_K neuron (the first-K gate: cls_bpf on clsact ingress, which passes one neuron event per
sample) and is read by the relay.

``per-synapse`` (a delay class per synapse)::

    host:in<l> ──► switch sw<l> (bridge: flood = broadcast) ──► 2m neuron ports
    each port's switch end s<l>n<j><p|m> carries the delay classes on egress (one class per
    synapse event source (i, sign)): 2n·2m shaped copies per sample, less the pruned ones.

``shared`` and ``shared-clone`` (a delay line per (event, distinct delay))::

    host:in<l> ──► f<in l> ingress: line splitter ── one copy per line of the event ──► f<in l>
    egress: htb, one class per line (`DelayLine`) ──► in<l> ingress, either
      shared:       the membership table: counts the line's delayed copy in each member's neuron
                    state ── one neuron event per (member, sample) at its K-th ──► the member's host end
      shared-clone: the line fan-out ── a copy per member port ──► the member's host end (its neuron)

    With n-bit delays an event meets at most 2ⁿ distinct delays over the layer's 2m ports, so a
    sample shapes ≤ 2n·2ⁿ copies however many neurons there are. Every member counts the RX stamp
    the line's delayed copy got from the kernel: ``shared`` counts it where the copy arrives and
    sends a port only its neuron event; ``shared-clone`` copies the frame into each member's host
    end, whose neuron counts it there (unshaped copies: one per kept synapse).

A convolution compiles to a layer like any other: its neurons are (channel, row, column), its
ports' synapses its receptive fields (the channel's kernel at every position), so with shared lines
an input event's lines are its distinct delays over the neurons whose fields hold it. Between
layers the relay re-encodes: x' = pool(ReLU(−s·y)) with the layer's own s and pooling, flattened
channel-major (`LayerPlan.relay`), and the scores are −s·y, rectified if the plan says so
(`FabricPlan.scores`); the simulator applies the same two methods. A plan may describe layers of up
to `MAX_PLAN_PORTS_PER_LAYER` ports (LeNet-5's conv1 has 6912); a kernel fabric on one machine
builds at most `MAX_PORTS_PER_LAYER` (testbed.fabric.live).

Interface names are logical suffixes; the builder prefixes ``p2<run id>``.
Times: `tau_us` maps one model unit to microseconds; layer windows are in µs from the layer's
model time zero, its origin: the slot's base plus the longest of its events' leads. An event of
model time t with lead a is sent at origin + t·τ − a, and each of its delay classes holds a longer
(testbed.plan.compiler explains why), so it arrives at origin + t·τ + the model's delay.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from testbed.atomic_file import write_atomic
from testbed.errors import PlanError
from testbed.model.encoding import encode
from testbed.model.layers import max_pool
from testbed.plan.tc import TcTree, drop_probability

PLAN_FORMAT = "pi2-fabric-plan"
PLAN_VERSION = 6  # 2: per-event leads; 3: gates without drop_primers, netem leaves with limit_packets;
#                 4: spikes carry their origin (wire time_ns), gates time out; 5: shared delay lines;
#                 6: per-layer s, neuron grids and pooling, rectified scores (convolutions); shared lines
#                    count in a membership table ("shared"), the clone fan-out is "shared-clone"
SIGN_PLUS, SIGN_MINUS = 0, 1  # z⁺ port / z⁻ port; also t⁺ / t⁻ events on the wire
MAX_PORTS_PER_LAYER = 512  # what a kernel fabric builds: 2m veth pairs per layer; beyond this, building and
#                           flooding cost too much (testbed.fabric.live refuses larger plans)
MAX_PLAN_PORTS_PER_LAYER = 1 << 16  # what a plan may describe (LeNet-5's conv1 has 6912): the simulator runs it
MAX_CLASS_MINOR = 0xFFFE  # htb class minors 2i + sign + 1 per input i; netem leaves take handle minor + 1
MAX_LAYERS = 64
MAX_TIME_US = 3.6e9  # one hour: any plan time beyond this is a mistake (and Infinity overflows timers)
MAX_PLAN_BYTES = 512 << 20  # a 512-port layer of 32k inputs is ≈ 100 MB of JSON
DELAY_KINDS = ("htb-primer", "netem")
GATE_KINDS = ("bpf-first-k",)
DELAY_LINE_KINDS = ("shared", "shared-clone", "per-synapse")  # the first is what `pi2 compile` builds by default
SHARED_LINE_KINDS = ("shared", "shared-clone")  # the designs with delay lines (`DelayLine`)
MAX_LINES_PER_EVENT = 255  # the wire's line byte numbers an event's lines 1..255
MAX_BANKS = 8  # delay-line banks (samples sharing no class) and slots per layer: neuron state rings hold 16 samples
# Interface-name suffixes: the kernel prefixes p2 + a 4-character run id and caps names at 15
# bytes (testbed.kernel.names.SUFFIX_MAX, which a test keeps equal to this).
NAME_SUFFIX_MAX = 9
NAME_SUFFIX_RE = re.compile(r"^[a-z0-9._-]+$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
        if not (0 <= self.delay_us <= MAX_TIME_US and 0 <= self.target_us <= MAX_TIME_US):
            raise PlanError(f"synapse ({self.source}, {self.sign}): delays must be in 0..{MAX_TIME_US:g} µs, "
                            f"got {self.target_us} and {self.delay_us}")


@dataclass(frozen=True)
class DelayLine:
    """One shared delay line: every copy of event (source, sign) that needs `delay_us`.

    The splitter sends one copy of the event (and of its primer, if shaped) down the line, marked
    with `line` (1..the event's number of lines) on the wire; on the injector link's fabric end the
    line's htb class for the sample's bank, `classids[sample mod banks]` (`Timing.banks`), holds it
    `delay_us` (no classids: unshaped, the copy passes at once); the membership table or fan-out
    then gives it to each port in `members` (indexes into the layer's ports, in the order they are
    served). `target_us` is the model's delay plus the event's lead, as for a Synapse.
    """

    source: int
    sign: int
    line: int
    target_us: float
    delay_us: float
    classids: tuple[str, ...]
    members: tuple[int, ...]

    def __post_init__(self) -> None:
        where = f"delay line ({self.source}, {self.sign}, {self.line})"
        if self.sign not in (SIGN_PLUS, SIGN_MINUS) or self.source < 0 or not 1 <= self.line <= MAX_LINES_PER_EVENT:
            raise PlanError(f"{where}: source must be ≥ 0, sign 0 or 1 and line 1..{MAX_LINES_PER_EVENT}")
        if not (0 <= self.delay_us <= MAX_TIME_US and 0 <= self.target_us <= MAX_TIME_US):
            raise PlanError(f"{where}: delays must be in 0..{MAX_TIME_US:g} µs, got {self.target_us} and {self.delay_us}")
        if not self.members or len(set(self.members)) != len(self.members) or min(self.members) < 0:
            raise PlanError(f"{where}: members must be distinct port indexes ≥ 0, at least one")


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
        if self.sign not in (SIGN_PLUS, SIGN_MINUS) or self.neuron < 0:
            raise PlanError(f"port {self.host_if}: neuron must be ≥ 0 and sign 0 or 1, got {self.neuron}, {self.sign}")
        events = [(s.source, s.sign) for s in self.synapses]
        if len(set(events)) != len(events):
            raise PlanError(f"port {self.host_if}: an event (source, sign) has two synapses")
        classes = {c.classid for c in self.delay_tc.classes}
        missing = sorted({s.classid for s in self.synapses if s.classid is not None} - classes)
        if missing:
            raise PlanError(f"port {self.host_if}: synapses use classes {missing[:4]} its delay_tc does not define")


@dataclass(frozen=True)
class LayerPlan:
    """One π²_K layer as a switch, its ports and its time window, and what the relay makes of its
    outputs: x' = pool(ReLU(−s·y)) over the neuron grid `shape` for the next layer (`relay`).

    A convolution is a layer like any other: neuron j = (channel, row, column) of `shape` (C, H, W),
    channel-major, and its ports' synapses are its receptive field's inputs only, through its
    channel's kernel (the same delays at every position). With shared delay lines, an input event's
    lines are its distinct delays over the neurons whose fields contain it (testbed.plan.compiler).
    """

    index: int
    n_inputs: int
    n_neurons: int
    k: int
    switch: str
    inject_if: str
    window_us: float  # deadline (whole µs): each port's gate drops spikes received later than this after the origin
    offset_mk: float  # causal offset M_K (model units) measured on the calibration data
    ports: tuple[NeuronPort, ...]
    leads_us: tuple[float, ...]  # per event (t⁺ of inputs 0..n−1, then t⁻): sent this long before its time
    s: float  # the relay's scale: a hidden layer passes ReLU(−s·y), the last one scores −s·y
    shape: tuple[int, ...]  # the neurons' grid: (m,) dense, (C, H, W) conv; neuron j is its channel-major index
    pool: int  # the relay max-pools ReLU(−s·y) over pool×pool windows of each channel (1: none), then flattens
    lines: tuple[DelayLine, ...] = ()  # shared delay lines (empty: a delay class per synapse on each port)
    line_tc: TcTree = TcTree()  # shared lines: on the injector link's fabric end (splitter, line classes)
    fanout_tc: TcTree = TcTree()  # shared lines: on the injector end's ingress (membership table or fan-out)

    def __post_init__(self) -> None:
        where = f"layer {self.index}"
        if not (self.n_inputs >= 1 and self.n_neurons >= 1 and self.k >= 1):
            raise PlanError(f"{where}: n_inputs, n_neurons and k must be ≥ 1")
        if 2 * self.n_neurons > MAX_PLAN_PORTS_PER_LAYER:
            raise PlanError(f"{where} has {self.n_neurons} neurons = {2 * self.n_neurons} ports; a plan "
                            f"describes at most {MAX_PLAN_PORTS_PER_LAYER} ports per layer")
        self._check_relay(where)
        if 2 * self.n_inputs > MAX_CLASS_MINOR:
            raise PlanError(f"{where} has {self.n_inputs} inputs; a port holds at most {MAX_CLASS_MINOR // 2}")
        if len(self.ports) != 2 * self.n_neurons:
            raise PlanError(f"{where}: {len(self.ports)} ports for {self.n_neurons} neurons (expected 2 per neuron)")
        if {(p.neuron, p.sign) for p in self.ports} != {(j, s) for j in range(self.n_neurons) for s in (0, 1)}:
            raise PlanError(f"{where}: ports must be one z⁺ and one z⁻ port per neuron 0..{self.n_neurons - 1}")
        for port in self.ports:
            if port.layer != self.index or port.k != self.k:
                raise PlanError(f"port {port.host_if}: layer {port.layer}, k {port.k}; its layer {self.index} has k {self.k}")
            if any(s.source >= self.n_inputs for s in port.synapses):
                raise PlanError(f"port {port.host_if}: a synapse's source is ≥ the layer's {self.n_inputs} inputs")
        if not 0 < self.window_us <= MAX_TIME_US:
            raise PlanError(f"{where}: window_us must be in (0, {MAX_TIME_US:g}] µs, got {self.window_us}")
        if not math.isfinite(self.offset_mk):
            raise PlanError(f"{where}: offset_mk must be a finite number, got {self.offset_mk}")
        if len(self.leads_us) != 2 * self.n_inputs or not all(0 <= lead <= MAX_TIME_US for lead in self.leads_us):
            raise PlanError(f"{where}: leads_us needs {2 * self.n_inputs} values in 0..{MAX_TIME_US:g} µs "
                            f"(one per event), got {len(self.leads_us)}")
        if self.lines:
            self._check_lines(where)

    def _check_relay(self, where: str) -> None:
        if not (_is_number(self.s) and math.isfinite(self.s) and self.s > 0):
            raise PlanError(f"{where}: s must be a finite number > 0, got {self.s!r}")
        shape = self.shape
        if not (isinstance(shape, tuple) and len(shape) in (1, 3) and all(type(d) is int and d >= 1 for d in shape)
                and math.prod(shape) == self.n_neurons):
            raise PlanError(f"{where}: shape {shape!r} must be (m,) or (C, H, W), integers ≥ 1 whose product is the "
                            f"layer's {self.n_neurons} neurons")
        if type(self.pool) is not int or self.pool < 1 or (self.pool > 1 and (
                len(shape) != 3 or self.pool > min(shape[1:]))):
            raise PlanError(f"{where}: pool {self.pool!r} must be an integer ≥ 1, and 1 unless the layer's shape is "
                            f"(C, H, W) with H, W ≥ pool")

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The grid the relay passes on: `shape`, pooled."""
        if self.pool == 1:
            return self.shape
        c, h, w = self.shape
        return (c, h // self.pool, w // self.pool)

    def relay(self, y: np.ndarray) -> np.ndarray:
        """The next layer's inputs (batch, out size) from this layer's y (batch, m):
        pool(ReLU(−s·y)), flattened channel-major. User space re-encodes between layers; within
        the layer, the kernel decided every arrival and drop."""
        x = np.maximum(-self.s * np.asarray(y, dtype=np.float64), 0.0)
        if self.pool > 1:
            x = max_pool(x.reshape((len(x),) + self.shape), self.pool)
        return x.reshape(len(x), -1)

    def _check_lines(self, where: str) -> None:
        """Shared lines must give each port exactly its synapses, at their delays, and nothing else:
        the ports' synapse lists (what each neuron counts) and the lines (what the kernel and the
        simulator deliver) are two views of one fact."""
        seen: dict[tuple[int, int], list[int]] = {}
        given: dict[int, dict[tuple[int, int], float]] = {q: {} for q in range(len(self.ports))}
        classes = {c.classid for c in self.line_tc.classes}
        banks = {len(line.classids) for line in self.lines} - {0}
        if len(banks) > 1:
            raise PlanError(f"{where}: shaped delay lines have {sorted(banks)} classes each; expected one per bank, alike")
        for line in self.lines:
            if line.source >= self.n_inputs or max(line.members) >= len(self.ports):
                raise PlanError(f"{where}: delay line ({line.source}, {line.sign}, {line.line}) names an input or a "
                                f"port the layer does not have")
            if not set(line.classids) <= classes:
                raise PlanError(f"{where}: delay line ({line.source}, {line.sign}, {line.line}) uses classes "
                                f"{list(line.classids)}, which line_tc does not all define")
            seen.setdefault((line.source, line.sign), []).append(line.line)
            for q in line.members:
                if (line.source, line.sign) in given[q]:
                    raise PlanError(f"{where}: port {self.ports[q].host_if} is a member of two lines of event "
                                    f"({line.source}, {line.sign})")
                given[q][(line.source, line.sign)] = line.delay_us
        for event, numbers in seen.items():
            if sorted(numbers) != list(range(1, len(numbers) + 1)):
                raise PlanError(f"{where}: the lines of event {event} must be numbered 1..{len(numbers)}, got {sorted(numbers)}")
        for q, port in enumerate(self.ports):
            if port.delay_tc.classes or given[q] != {(s.source, s.sign): s.delay_us for s in port.synapses}:
                raise PlanError(f"{where}: port {port.host_if}'s synapses are not the lines it is a member of "
                                f"(or it has delay classes of its own); recompile with `pi2 compile`")

    @property
    def origin_us(self) -> float:
        """Where the layer's model time zero lies after its slot's base: the longest lead, so
        that no event is sent before the slot begins."""
        return max(self.leads_us)

    def lead_us(self, source: int, sign: int) -> float:
        return self.leads_us[event_index(source, sign, self.n_inputs)]

    def inject_us(self, x: np.ndarray, t0: float, tau_us: float) -> np.ndarray:
        """(batch, n, 2) when event (i, sign) of inputs x (batch, n) is sent, µs after the layer's
        origin: its model time [T0 ± x]₊·τ less its lead."""
        t_plus, t_minus = encode(x, t0)
        leads = np.asarray(self.leads_us).reshape(2, self.n_inputs).T  # leads_us lists t⁺ events, then t⁻
        return np.stack([t_plus, t_minus], axis=-1) * tau_us - leads[None]

    def port_events_us(self) -> tuple[np.ndarray, np.ndarray]:
        """Each port's arrivals, sparse: (events (ports, F), delays (ports, F)), event 2·source +
        sign of every synapse the port keeps (shared lines: of every line it is a member of), in
        event order, with its realised delay; a port with fewer than the widest port's F ends in
        (0, inf): nothing arrives. A conv layer's port costs its receptive field, not the layer's
        2n events."""
        per_port: list[list[tuple[int, float]]] = [[] for _ in self.ports]
        if self.lines:
            for line in self.lines:
                for q in line.members:
                    per_port[q].append((2 * line.source + line.sign, line.delay_us))
        else:
            for q, port in enumerate(self.ports):
                per_port[q] = [(2 * syn.source + syn.sign, syn.delay_us) for syn in port.synapses]
        width = max(len(pairs) for pairs in per_port)
        events = np.zeros((len(self.ports), width), dtype=np.int64)
        delays_us = np.full((len(self.ports), width), np.inf)
        for q, pairs in enumerate(per_port):
            pairs.sort()
            events[q, :len(pairs)] = [e for e, _ in pairs]
            delays_us[q, :len(pairs)] = [d for _, d in pairs]
        return events, delays_us

    def port_delays_us(self) -> np.ndarray:
        """(ports, n, 2) realised delay of event (i, sign) on each port (`port_events_us`, dense);
        inf where the port gets no copy (a pruned synapse, an input outside its receptive field)."""
        events, delays_us = self.port_events_us()
        out = np.full((len(self.ports), 2 * self.n_inputs), np.inf)
        rows, cols = np.nonzero(np.isfinite(delays_us))
        out[rows, events[rows, cols]] = delays_us[rows, cols]
        return out.reshape(len(self.ports), self.n_inputs, 2)

    def flood_offsets_us(self, copy_us: float) -> np.ndarray:
        """(ports,) when each port's copy of an event leaves the switch, after the first copy, for a
        bridge taking `copy_us` per copy (`Timing.flood_copy_us`).

        Both backends attach a layer's ports to its bridge in plan order, and Linux puts a new port
        at the head of the bridge's port list, which a flood walks from the head: port P − 1 is
        served first (measured: with one event at a time, a primer reaches port q ≈4 µs per
        later port after the event's TX stamp).

        Shared lines flood nothing: every member's copy of a line carries the RX stamp the
        delayed copy got on the injector end, whatever its place in the fan-out (the fan-out
        redirects within one namespace, which keeps an skb's stamp), so all offsets are 0.
        """
        if self.lines:
            return np.zeros(len(self.ports))
        return (len(self.ports) - 1 - np.arange(len(self.ports))) * copy_us


@dataclass(frozen=True)
class Timing:
    """How samples are paced through the fabric."""

    tau_us: float  # one model time unit
    period_us: float  # spacing of consecutive samples' injections (pipelined across layers)
    relay_us: float  # time a relay gets between a layer's deadline and the next layer's base time
    flood_copy_us: float  # bridge flood: each port's copy leaves this long after the one before (testbed.sim)
    # Overlapping samples: sample s's layer l starts at slot s + layer_slots·l (a slot lasting
    # period_us), and uses delay-line bank s mod banks, so a layer has layer_slots samples in flight
    # and a class is reused every `banks` samples (testbed.plan.compiler derives both).
    banks: int = 1
    layer_slots: int = 1

    def __post_init__(self) -> None:
        if not (1 <= self.banks <= MAX_BANKS and self.banks & (self.banks - 1) == 0 and 1 <= self.layer_slots <= MAX_BANKS):
            raise PlanError(f"timing.banks {self.banks} and layer_slots {self.layer_slots}: expected a power of two "
                            f"and a count, each in 1..{MAX_BANKS}")
        for name in ("tau_us", "period_us"):
            if not 0 < getattr(self, name) <= MAX_TIME_US:
                raise PlanError(f"timing.{name} must be in (0, {MAX_TIME_US:g}] µs, got {getattr(self, name)}")
        if not (0 <= self.relay_us <= MAX_TIME_US and 0 <= self.flood_copy_us <= MAX_TIME_US):
            raise PlanError(f"timing.relay_us and timing.flood_copy_us must be in 0..{MAX_TIME_US:g} µs")


@dataclass(frozen=True)
class Packets:
    """Frame sizes on the wire (bytes as qdiscs count them: Ethernet header included)."""

    spike_bytes: int
    primer_bytes: int  # 0: the delay realisation needs no primer (netem)

    def __post_init__(self) -> None:
        if not (14 < self.spike_bytes <= 65535 and (self.primer_bytes == 0 or self.spike_bytes <= self.primer_bytes <= 65535)):
            raise PlanError(f"packets: spike_bytes {self.spike_bytes} must be in 15..65535 and primer_bytes "
                            f"{self.primer_bytes} 0 or in spike_bytes..65535")


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
    delay_lines: str = "per-synapse"  # SHARED_LINE_KINDS: a delay line per (event, distinct delay); else a class per synapse
    rectified: bool = False  # class scores ReLU(−s·y) of the last layer instead of −s·y (`scores`)
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if self.version != PLAN_VERSION:
            raise PlanError(f"plan version {self.version}: this pi2 reads version {PLAN_VERSION}; recompile it with "
                            "`pi2 compile`")
        if not 1 <= len(self.layers) <= MAX_LAYERS:
            raise PlanError(f"a plan needs 1..{MAX_LAYERS} layers, got {len(self.layers)}")
        if self.delay_kind not in DELAY_KINDS or self.gate_kind not in GATE_KINDS:
            raise PlanError(f"delay_kind {self.delay_kind!r} / gate_kind {self.gate_kind!r}: expected one of "
                            f"{DELAY_KINDS} / {GATE_KINDS}")
        if self.delay_lines not in DELAY_LINE_KINDS:
            raise PlanError(f"delay_lines {self.delay_lines!r}: expected one of {DELAY_LINE_KINDS}")
        if any(bool(layer.lines) != (self.delay_lines in SHARED_LINE_KINDS) for layer in self.layers):
            raise PlanError(f"delay_lines {self.delay_lines!r}: shared plans need delay lines in every layer, "
                            "per-synapse plans none")
        if any(len(line.classids) not in (0, self.timing.banks) for layer in self.layers for line in layer.lines) or (
                self.timing.banks > 1 and self.delay_lines not in SHARED_LINE_KINDS):
            raise PlanError(f"timing.banks {self.timing.banks}: every shaped delay line needs one class per bank "
                            "(per-synapse plans have one bank); recompile the plan with `pi2 compile`")
        if (self.delay_kind == "htb-primer") != (self.packets.primer_bytes > 0):
            raise PlanError(f"packets.primer_bytes {self.packets.primer_bytes}: htb-primer plans need primers, netem "
                            f"plans none")
        if set(self.constants) != {"t0", "c", "s"} or not all(
                _is_number(v) and math.isfinite(v) for v in self.constants.values()):
            raise PlanError(f"constants {dict(self.constants)}: expected finite numbers t0, c and s")
        for i, layer in enumerate(self.layers):
            if layer.index != i:
                raise PlanError(f"layer {i} has index {layer.index}")
            if i and layer.n_inputs != math.prod(self.layers[i - 1].out_shape):
                raise PlanError(f"layer {i} has {layer.n_inputs} inputs but layer {i - 1} passes on "
                                f"{math.prod(self.layers[i - 1].out_shape)} values (shape {self.layers[i - 1].out_shape})")
        if not isinstance(self.rectified, bool):
            raise PlanError(f"rectified must be true or false, got {self.rectified!r}")
        names = [n for layer in self.layers for n in (layer.switch, layer.inject_if)] + [
            n for layer in self.layers for p in layer.ports for n in (p.switch_if, p.host_if)]
        bad = [n for n in names if len(n) > NAME_SUFFIX_MAX or not NAME_SUFFIX_RE.match(n)]
        if bad:
            raise PlanError(f"interface names {bad[:4]}: expected 1..{NAME_SUFFIX_MAX} characters of [a-z0-9._-]")
        if len(set(names)) != len(names):
            raise PlanError("interface names (switches, injector and port ends) must be unique in a plan")

    def scores(self, y: np.ndarray) -> np.ndarray:
        """Class scores (batch, classes) from the last layer's y: −s·y, rectified if the plan says
        so (ties at zero then go to the first class, as the golden model's argmax)."""
        v = -self.layers[-1].s * np.asarray(y, dtype=np.float64)
        return np.maximum(v, 0.0) if self.rectified else v

    @property
    def packets_per_sample(self) -> dict[str, int]:
        """Frames one sample puts through the fabric: injected; copied towards neuron ports (per
        synapse: the bridge's flood of spikes and primers; shared-clone: the fan-out's spike copies,
        one per kept synapse; shared: none, the membership table counts each line copy for its
        members where it arrives); dropped before shaping (pruned synapses' flooded copies; shared lines
        never copy them); shaped (through a delay class, primers included); and, shared, copies
        the splitter sent down lines."""
        per_event = 2 if self.packets.primer_bytes else 1
        injected = sum(2 * layer.n_inputs * per_event for layer in self.layers)
        kept = sum(len(p.synapses) for layer in self.layers for p in layer.ports)
        if self.delay_lines in SHARED_LINE_KINDS:
            lines = [line for layer in self.layers for line in layer.lines]
            shaped = sum(per_event if line.classids else 0 for line in lines)
            copies = kept if self.delay_lines == "shared-clone" else 0
            return {"injected": injected, "port_copies": copies, "pruned": 0, "shaped": shaped,
                    "line_copies": shaped + sum(not line.classids for line in lines)}
        port_copies = sum(2 * layer.n_inputs * per_event * len(layer.ports) for layer in self.layers)
        shaped = sum(per_event * sum(s.classid is not None for p in layer.ports for s in p.synapses) for layer in self.layers)
        return {"injected": injected, "port_copies": port_copies, "pruned": port_copies - per_event * kept,
                "shaped": shaped, "line_copies": 0}

    def summary(self) -> dict[str, Any]:
        """What `pi2 compile --show` prints: objects, packets and time windows."""
        layers = []
        for layer in self.layers:
            classes = sum(len(p.delay_tc.classes) for p in layer.ports) + len(layer.line_tc.classes)
            layers.append({"layer": layer.index, "inputs": layer.n_inputs, "neurons": layer.n_neurons, "k": layer.k,
                           "ports": len(layer.ports), "classes": classes,
                           "pruned": 2 * layer.n_inputs * len(layer.ports) - sum(len(p.synapses) for p in layer.ports),
                           "filters": sum(len(p.delay_tc.filters) for p in layer.ports),
                           "gates": sum(f.kind == "bpf" for p in layer.ports for f in p.gate_tc.filters),
                           "loss": max(drop_probability(p.gate_tc) for p in layer.ports),
                           "lines": len(layer.lines), "window_us": layer.window_us, "origin_us": layer.origin_us,
                           "shape": list(layer.shape), "pool": layer.pool, "s": layer.s,
                           "offset_mk": layer.offset_mk})
        return {"profile": self.profile, "delay": self.delay_kind, "gate": self.gate_kind,
                "delay_lines": self.delay_lines,
                "tau_us": self.timing.tau_us, "period_us": self.timing.period_us,
                "samples_per_s_bound": 1e6 / self.timing.period_us,
                "banks": self.timing.banks, "layer_slots": self.timing.layer_slots,
                "namespaces": 2, "bridges": len(self.layers),
                "veth_pairs": sum(1 + len(layer.ports) for layer in self.layers),
                "packets_per_sample": self.packets_per_sample, "layers": layers, "network": dict(self.network)}

    def to_dict(self) -> dict[str, Any]:
        out = {"format": PLAN_FORMAT, "version": self.version, "profile": self.profile,
               "delay_kind": self.delay_kind, "gate_kind": self.gate_kind, "delay_lines": self.delay_lines,
               "rectified": self.rectified,
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
                                  "leads_us": list(layer.leads_us), "s": layer.s, "shape": list(layer.shape),
                                  "pool": layer.pool, "ports": ports,
                                  "lines": [[ln.source, ln.sign, ln.line, ln.target_us, ln.delay_us, list(ln.classids),
                                             list(ln.members)] for ln in layer.lines],
                                  "line_tc": layer.line_tc.to_dict(), "fanout_tc": layer.fanout_tc.to_dict()})
        return out

    def save(self, path: str | Path) -> Path:
        """Write the plan whole or not at all, never through a planted symlink (testbed.atomic_file)."""
        return write_atomic(path, json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _obj(raw: Any, keys: frozenset[str] | set[str], where: str, optional: frozenset[str] = frozenset()) -> Mapping[str, Any]:
    """`raw` as a JSON object with exactly `keys` (plus any of `optional`): a plan never carries
    a key its reader ignores (a misspelt field would otherwise run unshaped and change results)."""
    if not isinstance(raw, Mapping):
        raise PlanError(f"{where}: expected an object, got {type(raw).__name__}")
    missing, unknown = set(keys) - set(raw), set(raw) - set(keys) - optional
    if missing:
        raise PlanError(f"{where}: missing field {_names(missing)}")
    if unknown:
        raise PlanError(f"{where}: unknown field {_names(unknown)}; expected {_names(set(keys) | optional)}")
    return raw


def _names(keys: set[str]) -> str:
    return ", ".join(repr(str(k)[:40]) for k in sorted(keys, key=str)[:8])


def _int(value: Any, where: str) -> int:
    if type(value) is not int:
        raise PlanError(f"{where}: expected an integer, got {value!r:.40}")
    return value


def _num(value: Any, where: str) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise PlanError(f"{where}: expected a finite number, got {value!r:.40}")
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"{where}: expected true or false, got {value!r:.40}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PlanError(f"{where}: expected a string, got {value!r:.40}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PlanError(f"{where}: expected a list, got {type(value).__name__}")
    return value


TC_TREE_KEYS = frozenset({"qdiscs", "classes", "filters"})
TC_ITEM_KEYS = {"qdiscs": ({"kind", "handle"}, {"parent", "params"}), "classes": ({"kind", "classid", "parent"}, {"params"}),
                "filters": ({"kind", "parent"}, {"prio", "params"})}
TC_STRING_PARAMS = frozenset({"program", "flowid"})


def _tc_tree(raw: Any, where: str) -> TcTree:
    """A tc tree whose every key is known and every parameter a finite number (or, for program
    and flowid, a string); the kinds and parameter names are testbed.plan.tc's to check."""
    tree = _obj(raw, frozenset(), where, TC_TREE_KEYS)
    for part, (required, optional) in TC_ITEM_KEYS.items():
        for i, item in enumerate(_list(tree.get(part, []), f"{where}.{part}")):
            iw = f"{where}.{part}[{i}]"
            _obj(item, frozenset(required), iw, frozenset(optional))
            for key in required | optional - {"params", "prio"}:
                if key in item:
                    _str(item[key], f"{iw}.{key}")
            if "prio" in item and not 1 <= _int(item["prio"], f"{iw}.prio") <= 0xFFFF:
                raise PlanError(f"{iw}.prio: expected 1..65535, got {item['prio']}")
            params = item.get("params", {})
            if not isinstance(params, Mapping):
                raise PlanError(f"{iw}.params: expected an object")
            for key, value in params.items():
                if key in TC_STRING_PARAMS:
                    _str(value, f"{iw}.params.{key}")
                elif not (_is_number(value) and math.isfinite(value) and 0 <= value < 2 ** 64):
                    raise PlanError(f"{iw}.params.{key}: expected a finite number in 0..2⁶⁴, got {value!r:.40}")
    return TcTree.from_dict(tree)


PLAN_KEYS = frozenset({"format", "version", "profile", "delay_kind", "gate_kind", "delay_lines", "rectified",
                       "constants", "network", "timing", "packets", "layers"})
NETWORK_KEYS = frozenset({"path", "sha256", "k", "bits", "input_shape"})
LAYER_KEYS = frozenset({"index", "n_inputs", "n_neurons", "k", "switch", "inject_if", "window_us", "offset_mk",
                        "leads_us", "s", "shape", "pool", "ports", "lines", "line_tc", "fanout_tc"})
PORT_KEYS = frozenset({"neuron", "sign", "k", "switch_if", "host_if", "synapses", "delay_tc", "gate_tc"})


def _network(raw: Any, where: str) -> dict[str, Any]:
    net = dict(_obj(raw, NETWORK_KEYS, where))
    if net["path"] is not None:
        _str(net["path"], f"{where}.path")
    if net["sha256"] is not None and not (isinstance(net["sha256"], str) and SHA256_RE.match(net["sha256"])):
        raise PlanError(f"{where}.sha256: expected 64 hex digits or null")
    for key in ("k", "input_shape"):
        values = _list(net[key], f"{where}.{key}")
        if not all(type(v) is int and v >= 1 for v in values):
            raise PlanError(f"{where}.{key}: expected integers ≥ 1, got {values[:8]}")
    if net["bits"] is not None and not 1 <= _int(net["bits"], f"{where}.bits") <= 32:
        raise PlanError(f"{where}.bits: expected 1..32 or null (not quantised), got {net['bits']}")
    return net


def _synapse(raw: Any, where: str) -> Synapse:
    if not isinstance(raw, list) or len(raw) != 5:
        raise PlanError(f"{where}: expected [source, sign, target_us, delay_us, classid]")
    classid = raw[4] if raw[4] is None else _str(raw[4], f"{where}[4]")
    return Synapse(_int(raw[0], f"{where}[0]"), _int(raw[1], f"{where}[1]"), _num(raw[2], f"{where}[2]"),
                   _num(raw[3], f"{where}[3]"), classid)


def _line(raw: Any, where: str) -> DelayLine:
    if not isinstance(raw, list) or len(raw) != 7:
        raise PlanError(f"{where}: expected [source, sign, line, target_us, delay_us, classids, members]")
    classids = tuple(_str(c, f"{where}[5]") for c in _list(raw[5], f"{where}[5]"))
    members = tuple(_int(q, f"{where}[6]") for q in _list(raw[6], f"{where}[6]"))
    return DelayLine(_int(raw[0], f"{where}[0]"), _int(raw[1], f"{where}[1]"), _int(raw[2], f"{where}[2]"),
                     _num(raw[3], f"{where}[3]"), _num(raw[4], f"{where}[4]"), classids, members)


def _dataclass(cls: type, raw: Any, where: str) -> Any:
    """A Timing or Packets from its object: exact keys, numbers of the field's type."""
    names = [f.name for f in fields(cls)]
    obj = _obj(raw, frozenset(names), where)
    convert = {"int": _int, "float": _num}
    return cls(**{f.name: convert[str(f.type)](obj[f.name], f"{where}.{f.name}") for f in fields(cls)})


def plan_from_dict(raw: Any, where: str = "plan") -> FabricPlan:
    """Validate and build a plan from its JSON form, as strictly as a network file: every field
    known and of its type, in its range, and consistent with the others (the dataclasses check)."""
    if not isinstance(raw, Mapping) or raw.get("format") != PLAN_FORMAT:
        got = raw.get("format") if isinstance(raw, Mapping) else type(raw).__name__
        raise PlanError(f"{where}: field 'format' = {got!r}; expected {PLAN_FORMAT!r} (make one with `pi2 compile`)")
    top = _obj(raw, PLAN_KEYS, where)
    if _int(top["version"], f"{where}: version") != PLAN_VERSION:
        raise PlanError(f"{where}: plan version {top['version']}: this pi2 reads version {PLAN_VERSION}; "
                        f"recompile it with `pi2 compile`")
    layers_raw = _list(top["layers"], f"{where}: layers")
    if not 1 <= len(layers_raw) <= MAX_LAYERS:
        raise PlanError(f"{where}: a plan needs 1..{MAX_LAYERS} layers, got {len(layers_raw)}")
    try:
        layers = []
        for li, lraw in enumerate(layers_raw):
            lw = f"{where}: layers[{li}]"
            layer = _obj(lraw, LAYER_KEYS, lw)
            ports_raw = _list(layer["ports"], f"{lw}.ports")
            if len(ports_raw) > MAX_PLAN_PORTS_PER_LAYER:  # before building a million objects
                raise PlanError(f"{lw}: {len(ports_raw)} ports; a plan describes at most "
                                f"{MAX_PLAN_PORTS_PER_LAYER} ports per layer")
            ports = []
            for pi, praw in enumerate(ports_raw):
                pw = f"{lw}.ports[{pi}]"
                port = _obj(praw, PORT_KEYS, pw)
                synapses = tuple(_synapse(syn, f"{pw}.synapses[{si}]")
                                 for si, syn in enumerate(_list(port["synapses"], f"{pw}.synapses")))
                ports.append(NeuronPort(li, _int(port["neuron"], f"{pw}.neuron"), _int(port["sign"], f"{pw}.sign"),
                                        _int(port["k"], f"{pw}.k"), _str(port["switch_if"], f"{pw}.switch_if"),
                                        _str(port["host_if"], f"{pw}.host_if"), synapses,
                                        _tc_tree(port["delay_tc"], f"{pw}.delay_tc"),
                                        _tc_tree(port["gate_tc"], f"{pw}.gate_tc")))
            leads = tuple(_num(a, f"{lw}.leads_us[{i}]") for i, a in enumerate(_list(layer["leads_us"], f"{lw}.leads_us")))
            layers.append(LayerPlan(_int(layer["index"], f"{lw}.index"), _int(layer["n_inputs"], f"{lw}.n_inputs"),
                                    _int(layer["n_neurons"], f"{lw}.n_neurons"), _int(layer["k"], f"{lw}.k"),
                                    _str(layer["switch"], f"{lw}.switch"), _str(layer["inject_if"], f"{lw}.inject_if"),
                                    _num(layer["window_us"], f"{lw}.window_us"),
                                    _num(layer["offset_mk"], f"{lw}.offset_mk"), tuple(ports), leads,
                                    _num(layer["s"], f"{lw}.s"),
                                    tuple(_int(d, f"{lw}.shape") for d in _list(layer["shape"], f"{lw}.shape")),
                                    _int(layer["pool"], f"{lw}.pool"),
                                    tuple(_line(ln, f"{lw}.lines[{i}]") for i, ln in
                                          enumerate(_list(layer["lines"], f"{lw}.lines"))),
                                    _tc_tree(layer["line_tc"], f"{lw}.line_tc"),
                                    _tc_tree(layer["fanout_tc"], f"{lw}.fanout_tc")))
        constants = _obj(top["constants"], frozenset({"t0", "c", "s"}), f"{where}: constants")
        network = _network(top["network"], f"{where}: network")
        plan = FabricPlan(_str(top["profile"], f"{where}: profile"), _str(top["delay_kind"], f"{where}: delay_kind"),
                          _str(top["gate_kind"], f"{where}: gate_kind"),
                          {k: _num(v, f"{where}: constants.{k}") for k, v in constants.items()}, network,
                          _dataclass(Timing, top["timing"], f"{where}: timing"),
                          _dataclass(Packets, top["packets"], f"{where}: packets"), tuple(layers),
                          _str(top["delay_lines"], f"{where}: delay_lines"),
                          _bool(top["rectified"], f"{where}: rectified"), top["version"])
    except PlanError as exc:
        message = str(exc)
        raise PlanError(message if message.startswith(where) else f"{where}: {message}") from None
    if network["k"] != [layer.k for layer in plan.layers] or math.prod(network["input_shape"]) != plan.layers[0].n_inputs:
        raise PlanError(f"{where}: network k {network['k']} / input_shape {network['input_shape']} disagree with "
                        f"the layers' k and inputs; recompile with `pi2 compile`")
    return plan


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a plan may hold")


def load_plan(path: str | Path) -> FabricPlan:
    """Read and validate a plan file (`plan_from_dict`); one PlanError line for any fault."""
    path = Path(path)
    try:
        with open(path, "rb") as src:
            data = src.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError:
        raise PlanError(f"{path}: no such plan file (make one with `pi2 compile NET -o {path.name}`)") from None
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the plan ({exc.strerror})") from None
    if len(data) > MAX_PLAN_BYTES:
        raise PlanError(f"{path}: over {MAX_PLAN_BYTES >> 20} MiB, larger than any plan the fabric can build")
    if data[:2] == b"PK" or data[:6] == b"\x93NUMPY":
        raise PlanError(f"{path}: this is a network file, not a plan; compile it first: `pi2 compile {path} -o plan.json`")
    try:
        raw = json.loads(data.decode(), parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PlanError(f"{path}: not a JSON plan ({str(exc)[:80]}); make one with `pi2 compile NET -o plan.json`") from None
    return plan_from_dict(raw, str(path))

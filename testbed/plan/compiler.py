"""Compile a π² network into a FabricPlan: delays into classes, neurons into gated ports.

For layer l with weights W (n×m), neuron j gets two ports. Port z⁺_j receives event t⁺_i
through delay d⁺_ij and t⁻_i through d⁻_ij; port z⁻_j receives t⁺_i through d⁻_ij and t⁻_i
through d⁺_ij (pi2-model.md, step 3). Where the delays are realised, `delay_lines` says:

- ``shared`` (the default) and ``shared-clone``: the synapses of one event that need the same
  delay share one delay line, an htb class on the layer's injector link (testbed.plan.fabric_plan,
  testbed.kernel.lines). Where the delayed copy arrives, ``shared``'s membership table counts it
  in each member port's neuron state and sends a port its neuron event at the K-th;
  ``shared-clone``'s fan-out copies it to each member port, whose neuron counts it. With n-bit
  delays an event has at most 2ⁿ distinct delays (plus the model's two ±c ends), so the shaped
  copies per sample grow with events × levels, not events × 2m ports.
- ``per-synapse``: each (port, event source) pair is one delay class on the port, so no two
  synapses ever share a class.

No two events of a sample share a class in either design, and every delay is independent.

A convolution (unpadded) compiles as a layer whose neuron (channel, row, column) keeps only its
receptive field's synapses, through its channel's kernel (`receptive_fields`): its ports are the
neuron groups of the layer's shared lines, and each event's lines are its distinct delays over the
fields that contain it. The layer records its s, its neuron grid and the pooling the relay applies
before the next layer, and the plan whether the scores are rectified (testbed.plan.fabric_plan).

Delays are realised as the profile's `delay` primitive can:

- ``htb-primer`` (kernels without netem): an htb class of rate r with a minimal bucket passes
  a primer of P bytes at once and holds the spike behind it until the bucket has paid off the
  primer: delay = (P − burst)·8/r. The compiler picks r per class, a multiple of the profile's
  ``rate_quantum_bps`` (8: whole bytes/s, what htb takes; testbed.kernel.tc converts without
  rounding again), and the plan records the delay that rate realises.
- ``netem``: an unshaped htb class whose leaf netem holds every packet `delay_us` (a multiple of
  the profile's ``quantum_us``).

Loss (optional, `loss`, a drop probability): each neuron port drops every arriving spike with
probability 1/N before its gate counts it, as the profile's loss kind says: ``bpf-drop``, the gate
program itself (its ``drop_one_in``, testbed.kernel.gate), or ``gact-random``, a u32 filter with a
gact action in front of the gate (testbed.plan.tc). With ``shared`` lines no spike reaches a port,
and the membership table draws the same 1/N for each member's copy (the gate's N), so only
``bpf-drop`` builds there. The simulator drops with the same probability.

Time windows come from calibration data: a layer's deadline is the latest K-th arrival seen on
that data plus a margin, in whole µs after the layer's origin. Each port's gate drops a spike the
kernel received after it (the injector stamps every spike with its sample's origin, the gate
program holds the window), so a late spike never counts; the simulator drops the same ones.

Pruning (optional, `prune_margin`): a synapse whose arrival was never within `prune_margin`
model units of its port's K-th earliest arrival on the calibration data cannot change that
port's output on similar data, yet costs the kernel a shaped primer and spike per sample. The
compiler leaves such synapses out of the port; the port's synapse filter drops their events
before the shaper (testbed.kernel.classifier) and the simulator never delivers them. What this
costs in accuracy shows as simulation-vs-golden agreement.

Leads (optional, `lead`): every zero input fires both its events at T0, so without leads a
sample's layer begins with a burst of hundreds of primers that one CPU enqueues one after
another, and a primer enqueued late starts its synapse's delay late. A shaped delay counts from
the primer's enqueue, not from the time the model assigns the event, so the compiler gives
event e a lead a_e spread evenly over [0, lead·τ] (independent of the weights and the data): the
injector sends e at its model time minus a_e and every class of e holds a_e longer. Arrival
times are unchanged; the bursts become a train. The layer's model time zero (`origin_us`, the
largest lead) is that far after its slot's base. A layer that finishes sooner than the slowest
one spreads its events over the difference too, at no cost in samples/s.

Overlapping samples (optional, `banks` B > 1, shared lines): a sample's events go down the lines
of its bank (sample id mod B), B classes per shaped line with the same delay, so a class serves
every B-th sample and must only recover (its event's spread, margin, delay and token debt, the
drain) over B periods: period = drain / B. A layer's result, decoded at its deadline plus the
relay's time, is due when the next layer takes the sample `layer_slots` periods later (layer_slots
= ⌈(deadline + relay + lead) / period⌉), so each layer has layer_slots samples in flight, kept
apart by the neurons' per-sample state (testbed.kernel.gate) and by the deadline each spike
carries. B = 1 is one sample per layer in flight: period = max(drain, deadline + relay).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from testbed.errors import PlanError
from testbed.model.encoding import delays
from testbed.model.network import ConvLayer, DenseLayer, Pi2Network
from testbed.plan.fabric_plan import (DELAY_LINE_KINDS, MAX_BANKS, MAX_CLASS_MINOR, MAX_LINES_PER_EVENT,
                                      SHARED_LINE_KINDS, SIGN_MINUS, SIGN_PLUS, DelayLine, FabricPlan, LayerPlan, NeuronPort, Packets,
                                      Synapse, Timing, event_index)
from testbed.plan.profiles import Profile
from testbed.plan.tc import CLSACT_EGRESS, CLSACT_INGRESS, MAX_DROP_ONE_IN, ClassSpec, FilterSpec, QdiscSpec, TcTree
from testbed.plan.wire import SPIKE_FRAME_BYTES

# What `pi2 compile`/`pi2 infer` prune by default (model units; see the module docstring). Margin
# 0 prunes 60 % of the bundled digits network's shaped packets and changes none of its 360 test
# decisions in simulation (pi2 simulate: agreement with the golden model 100 %).
DEFAULT_PRUNE_MARGIN = 0.0
# Default model time unit: on this 2-core machine the shaper fabric's spikes arrive ≈0.1–0.35 ms
# off the plan (bench/infer.py), which 6 ms keeps to a few hundredths of a model unit at ≈15
# samples/s; kernels with netem and more cores do with less.
DEFAULT_TAU_US = 6000.0
DEFAULT_LEAD = 1.0  # model units over which a layer's events are spread ahead of their times
DEFAULT_RELAY_US = 3000.0  # time the relay gets to decode a layer before the next layer's injections
DEFAULT_DELAY_LINES = DELAY_LINE_KINDS[0]
DEFAULT_BANKS = 1  # delay-line banks: 1 keeps one sample per layer in flight
LOSS_KINDS = ("bpf-drop", "gact-random")  # the profile loss kinds the compiler builds


@dataclass(frozen=True)
class Realisation:
    """What the compiler needs to know of a tc profile."""

    profile: str
    delay_kind: str  # "htb-primer" | "netem"
    gate_kind: str = "bpf-first-k"
    primer_bytes: int = 1514  # a full 1500-MTU frame as qdiscs count it
    burst_bytes: int = 1  # htb class bucket for primer delays
    rate_quantum_bps: int = 8  # htb-primer class rates are multiples of this (8: whole bytes/s)
    class_rate_bps: int = 10**10  # netem: the unshaped htb class above each netem leaf
    limit_packets: int = 1000  # netem: the leaf's queue
    min_delay_us: float = 20.0  # below this a synapse is unshaped (timer resolution)
    quantum_us: float = 1.0  # netem delays are multiples of this
    flood_copy_us: float = 0.4  # bridge flood: per-port copy time (kernel-notes: 0.3–0.6 µs)
    max_delay_us: float = 1e6  # longest delay the realisation holds to its quantum
    margin_tau: float = 1.0  # a layer's deadline: latest calibrated K-th arrival + this many τ,
    margin_us_min: float = 0.0  # but at least this many µs (a stall of the fabric CPU lasts µs, not τ)
    loss_kind: str = "bpf-drop"  # how the profile drops spikes when a run asks for loss

    @classmethod
    def from_profile(cls, profile: Profile) -> "Realisation":
        """The compiler's view of a tc profile (tc_profiles/*.yaml): it reads every parameter the
        profile declares (tests/plan/test_profiles.py checks that none goes unread)."""
        delay = profile.primitive("delay")
        rng = profile.delay_range
        kind_params = {"htb-primer": ("primer_bytes", "burst_bytes", "rate_quantum_bps"),
                       "netem": ("class_rate_bps", "limit_packets")}[delay.kind]
        return cls(profile.name, delay.kind, profile.primitive("gate").kind,
                   **{key: delay.params[key] for key in kind_params},
                   min_delay_us=rng.min_us, quantum_us=rng.quantum_us, max_delay_us=rng.max_us,
                   flood_copy_us=profile.primitive("broadcast").params["flood_copy_us"],
                   margin_tau=profile.primitive("timeout").params["margin_tau"],
                   margin_us_min=profile.primitive("timeout").params["margin_us_min"],
                   loss_kind=profile.primitive("loss").kind)

    def __post_init__(self) -> None:
        if self.delay_kind not in ("htb-primer", "netem"):
            raise PlanError(f"profile {self.profile}: delay kind {self.delay_kind!r} is not one the compiler knows "
                            "('htb-primer', 'netem')")
        if self.delay_kind == "htb-primer" and not 0 < self.burst_bytes < self.primer_bytes:
            raise PlanError(f"profile {self.profile}: need 0 < burst_bytes < primer_bytes, got {self.burst_bytes}, {self.primer_bytes}")
        if self.rate_quantum_bps < 1 or self.rate_quantum_bps % 8 or not self.quantum_us > 0:
            raise PlanError(f"profile {self.profile}: rate_quantum_bps must be a multiple of 8 (whole bytes/s) and "
                            f"quantum_us > 0, got {self.rate_quantum_bps}, {self.quantum_us}")


def primer_delay_us(rate_bps: int, primer_bytes: int, burst_bytes: int) -> float:
    """Delay an htb class of `rate_bps` gives a spike queued behind a primer: (P − burst)·8/r."""
    return (primer_bytes - burst_bytes) * 8e6 / rate_bps


def realise_delay(target_us: float, real: Realisation) -> tuple[float, int | None]:
    """(realised delay µs, htb rate bps or None for an unshaped/netem class)."""
    if target_us < real.min_delay_us:
        return 0.0, None
    if real.delay_kind == "netem":
        return float(round(target_us / real.quantum_us) * real.quantum_us), None
    q = real.rate_quantum_bps
    rate = q * max(1, round((real.primer_bytes - real.burst_bytes) * 8e6 / target_us / q))
    return primer_delay_us(rate, real.primer_bytes, real.burst_bytes), rate


@dataclass(frozen=True)
class Calibration:
    """Per-layer time extents measured on calibration data (model units)."""

    kth_arrival: tuple[float, ...]  # latest K-th earliest arrival of any port
    event_range: tuple[np.ndarray, ...]  # per layer (2n events): latest − earliest time of each event
    offset_mk: tuple[float, ...]
    slack: tuple[np.ndarray, ...]  # per layer (neurons, port sign, 2f field events): min over samples of
    #                                 arrival − the port's K-th earliest (`Fields`: t⁺ of the field, then t⁻)


@dataclass(frozen=True, eq=False)
class Fields:
    """Which inputs each neuron of a layer sees, and through which model delays: a dense layer's
    neurons see every input; a convolution's neuron (channel, row, column) sees its receptive
    field, channel-major as im2col orders it, through its channel's kernel, the same delays at
    every position. Row j of each array is neuron j (channel-major over the layer's grid)."""

    inputs: np.ndarray  # (m, f) indexes into the layer's flattened (channel-major) inputs
    d_plus: np.ndarray  # (m, f) d⁺ of each synapse
    d_minus: np.ndarray  # (m, f) d⁻ = 2c − d⁺


def receptive_fields(layer: DenseLayer | ConvLayer, c: float, bits: int | None) -> Fields:
    """The `Fields` of a dense layer or an unpadded convolution (`compile_network` refuses padding)."""
    if isinstance(layer, DenseLayer):
        d_plus, d_minus = delays(layer.weight, c, bits)  # (n, m)
        return Fields(np.broadcast_to(np.arange(layer.n_inputs), (layer.n_neurons, layer.n_inputs)), d_plus.T, d_minus.T)
    cout, cin, kh, kw = layer.weight.shape
    _, h, w = layer.in_shape
    ho, wo = layer.conv_hw
    ci, a, b = (g.ravel() for g in np.meshgrid(np.arange(cin), np.arange(kh), np.arange(kw), indexing="ij"))
    rows = (np.arange(ho) * layer.stride)[:, None, None] + a  # (ho, 1, f)
    cols = (np.arange(wo) * layer.stride)[None, :, None] + b  # (1, wo, f)
    at = (ci * h * w + rows * w + cols).reshape(ho * wo, -1)  # (positions, f)
    d_plus, d_minus = delays(layer.weight.reshape(cout, -1), c, bits)  # (cout, f)
    return Fields(np.tile(at, (cout, 1)), np.repeat(d_plus, ho * wo, axis=0), np.repeat(d_minus, ho * wo, axis=0))


def calibrate(net: Pi2Network, x: np.ndarray) -> Calibration:
    """Measure each layer's time extents by running the golden model on `x`."""
    kth, ranges, offs, slack = [], [], [], []
    for layer, trace in zip(net.layers, net.trace(x)):
        fields = receptive_fields(layer, net.constants.c, net.bits)
        t_plus, t_minus = trace.t_plus.reshape(len(x), -1), trace.t_minus.reshape(len(x), -1)
        m, f = fields.inputs.shape
        worst = 0.0
        least = np.full((m, 2, 2 * f), np.inf)
        rows = max(1, (1 << 22) // (m * 2 * f))  # samples per chunk: each z below is ≤ 32 MiB
        for lo in range(0, len(x), rows):
            at_plus, at_minus = t_plus[lo:lo + rows][:, fields.inputs], t_minus[lo:lo + rows][:, fields.inputs]
            # z⁺: t⁺ through d⁺, t⁻ through d⁻;  z⁻: t⁺ through d⁻, t⁻ through d⁺ (b, m, 2f).
            zp = np.concatenate([at_plus + fields.d_plus, at_minus + fields.d_minus], axis=2)
            zm = np.concatenate([at_plus + fields.d_minus, at_minus + fields.d_plus], axis=2)
            for sign, z in ((SIGN_PLUS, zp), (SIGN_MINUS, zm)):
                kz = np.partition(z, layer.k - 1, axis=2)[:, :, layer.k - 1]  # (b, m): the K-th earliest
                worst = max(worst, float(kz.max()))
                least[:, sign] = np.minimum(least[:, sign], (z - kz[:, :, None]).min(axis=0))
        kth.append(worst)
        times = np.concatenate([t_plus, t_minus], axis=1)
        ranges.append(times.max(axis=0) - times.min(axis=0))
        offs.append(float(trace.offset.max()))
        slack.append(least)
    return Calibration(tuple(kth), tuple(ranges), tuple(offs), tuple(slack))


def synapse_classid(source: int, sign: int) -> str:
    """A port's class for event (source, sign): what the synapse classifier program computes."""
    return f"1:{2 * source + sign + 1:x}"


def _port_tc(layer: int, synapses: list[tuple[int, int, int | None]], real: Realisation,
             target_us: list[float], events: int) -> TcTree:
    """The switch-side egress tree of one port: htb, a class per shaped synapse, one eBPF
    classifier mapping a spike's key to its class, and, if the port keeps fewer than its `events`
    (2n) synapses, the synapse filter at clsact egress dropping the pruned ones (testbed.kernel.classifier)."""
    qdiscs = [QdiscSpec("htb", "1:", "root", {"default_class": 0})]
    filters = [FilterSpec("bpf", "1:", 1, {"program": "synapse_classifier", "layer": layer, "direct_action": 0})]
    if len(synapses) < events:
        qdiscs.append(QdiscSpec("clsact", "ffff:", "root"))
        filters.append(FilterSpec("bpf", CLSACT_EGRESS, 1, {"program": "synapse_filter", "layer": layer,
                                                             "events": events, "direct_action": 1}))
    classes: list[ClassSpec] = []
    for (source, sign, rate), target in zip(synapses, target_us):
        if target >= real.min_delay_us:
            _delay_class(2 * source + sign + 1, rate, target, real, classes, qdiscs)
    return TcTree(tuple(qdiscs), tuple(classes), tuple(filters))


def _delay_class(minor: int, rate: int | None, target_us: float, real: Realisation, classes: list[ClassSpec],
                 qdiscs: list[QdiscSpec]) -> str:
    """Append the htb class 1:`minor` that delays by `target_us` (rate `rate` for htb-primer; a
    netem leaf below an unshaped class for netem) to `classes`/`qdiscs`; return its classid."""
    classid = f"1:{minor:x}"
    if real.delay_kind == "htb-primer":
        classes.append(ClassSpec("htb", classid, "1:", {"rate_bps": rate, "ceil_bps": rate,
                                                          "burst_bytes": real.burst_bytes,
                                                          "cburst_bytes": real.burst_bytes}))
    else:
        # Unshaped htb class whose leaf netem holds each packet its realised delay.
        classes.append(ClassSpec("htb", classid, "1:", {"rate_bps": real.class_rate_bps,
                                                          "ceil_bps": real.class_rate_bps}))
        # Leaf handles must differ from the htb root's 1:, hence minor + 1.
        qdiscs.append(QdiscSpec("netem", f"{minor + 1:x}:", classid,
                                {"delay_us": _whole(realise_delay(target_us, real)[0]),
                                 "limit_packets": real.limit_packets}))
    return classid


def _shared_lines(li: int, n_inputs: int, port_synapses: list[list[tuple[int, int, float]]],
                  real: Realisation, fanout: str, banks: int) -> tuple[tuple[DelayLine, ...], TcTree, TcTree]:
    """A layer's delay lines, from each port's (source, sign, target µs) synapses: one line per
    (event, distinct target), numbered 1.. per event by rising delay, members in port order; the
    line tree (htb with `banks` classes per shaped line, one per sample bank, the splitter at
    clsact ingress) and the tree of
    the `fanout` program (line_neurons: the membership table; line_fanout: a copy per member).
    Lines are listed in the layer's event order (t⁺ of inputs 0..n−1, then t⁻)."""
    by_event: dict[tuple[int, int], dict[float, list[int]]] = {}
    for q, synapses in enumerate(port_synapses):
        for source, sign, target in synapses:
            by_event.setdefault((source, sign), {}).setdefault(target, []).append(q)
    lines: list[DelayLine] = []
    classes: list[ClassSpec] = []
    qdiscs = [QdiscSpec("htb", "1:", "root", {"default_class": 0}), QdiscSpec("clsact", "ffff:", "root")]
    for event in sorted(by_event, key=lambda e: event_index(e[0], e[1], n_inputs)):
        targets = sorted(by_event[event])
        if len(targets) > MAX_LINES_PER_EVENT:
            raise PlanError(f"layer {li}: event {event} needs {len(targets)} distinct delays; shared delay lines "
                            f"number at most {MAX_LINES_PER_EVENT} per event (quantise the delays, e.g. "
                            f"`pi2 train --bits 4`, or compile with --delay-lines per-synapse)")
        for r, target in enumerate(targets, start=1):
            realised, rate = realise_delay(target, real)
            classids = []
            for _ in range(banks if target >= real.min_delay_us else 0):
                minor = len(classes) + 1
                if minor + 1 > MAX_CLASS_MINOR:
                    raise PlanError(f"layer {li}: more than {MAX_CLASS_MINOR - 1} shaped delay line classes; compile "
                                    "with fewer --banks, --delay-lines per-synapse or delays quantised to fewer bits")
                classids.append(_delay_class(minor, rate, target, real, classes, qdiscs))
            lines.append(DelayLine(event[0], event[1], r, target, realised, tuple(classids),
                                   tuple(by_event[event][target])))
    widest = max(line.line for line in lines)
    params = {"layer": li, "events": 2 * n_inputs, "lines": widest, "direct_action": 1}
    line_tc = TcTree(tuple(qdiscs), tuple(classes),
                     (FilterSpec("bpf", CLSACT_INGRESS, 1, {"program": "line_splitter", "banks": banks, **params}),))
    fanout_tc = TcTree((QdiscSpec("clsact", "ffff:", "root"),), (),
                       (FilterSpec("bpf", CLSACT_INGRESS, 1, {"program": fanout, **params}),))
    return tuple(lines), line_tc, fanout_tc


def _whole(us: float) -> float | int:
    """A delay as an int when it is whole (plans list whole-µs netem delays as integers)."""
    return int(us) if float(us).is_integer() else us


def drop_one_in(loss: float, real: Realisation) -> int | None:
    """N such that dropping with probability 1/N realises `loss` (None for no loss)."""
    if not 0 <= loss < 1:
        raise PlanError(f"loss {loss!r}: expected a drop probability in [0, 1)")
    if loss == 0:
        return None
    if real.loss_kind not in LOSS_KINDS:
        raise PlanError(f"profile {real.profile}: its loss kind {real.loss_kind!r} is not built by the compiler; "
                        "use --profile shaper (the gate drops) or full (gact drops)")
    n = round(1 / loss)
    if n > MAX_DROP_ONE_IN or abs(1 / n - loss) > 0.01 * loss:
        raise PlanError(f"loss {loss:g}: spikes drop with probability 1/N for an integer N ≤ {MAX_DROP_ONE_IN}; "
                        f"the nearest are {1 / n:g} (N = {n}) and {1 / (n + 1):g} (N = {n + 1})")
    return n


def _port_order(n_neurons: int) -> list[tuple[int, int]]:
    """(neuron, sign) of a layer's ports in plan order: z⁺ then z⁻ of neuron 0, then neuron 1, …"""
    return [(j, sign) for j in range(n_neurons) for sign in (SIGN_PLUS, SIGN_MINUS)]


def _kept_synapses(net: Pi2Network, li: int, cal: Calibration, prune_margin: float | None,
                   tau_us: float) -> list[list[tuple[int, int, float]]]:
    """Per port (plan order), the synapses it keeps as (source, event sign, model delay µs): its
    neuron's field (`receptive_fields`), less what pruning leaves out."""
    fields = receptive_fields(net.layers[li], net.constants.c, net.bits)
    f = fields.inputs.shape[1]
    out = []
    for j, sign in _port_order(net.layers[li].n_neurons):
        # z⁺: t⁺ through d⁺, t⁻ through d⁻;  z⁻: t⁺ through d⁻, t⁻ through d⁺.
        via_plus, via_minus = ((fields.d_plus[j], fields.d_minus[j]) if sign == SIGN_PLUS
                               else (fields.d_minus[j], fields.d_plus[j]))
        slack = cal.slack[li][j, sign]
        out.append([(int(i), ev_sign, float(d) * tau_us)
                    for e, i in enumerate(fields.inputs[j].tolist())
                    for ev_sign, d, at in ((SIGN_PLUS, via_plus[e], e), (SIGN_MINUS, via_minus[e], f + e))
                    if prune_margin is None or slack[at] <= prune_margin])
    return out


def event_leads(n_inputs: int, lead_us: float) -> np.ndarray:
    """Lead (µs) of each of a layer's 2n events, t⁺ of inputs 0..n−1 then t⁻: evenly spread over
    [0, lead_us] in that order, so the t⁺ and t⁻ of one input, which a zero input fires together,
    are about half the span apart."""
    events = 2 * n_inputs
    return lead_us * np.arange(events) / (events - 1)


def _gate_tc(k: int, window_us: float, loss_one_in: int | None, loss_kind: str) -> TcTree:
    """clsact ingress of a neuron port's host end: the random drop (if the run has loss), then the
    first-K gate, so the gate counts only the spikes that survived. A ``bpf-drop`` loss is the
    gate's own first step; a ``gact-random`` one is a match-all u32 filter in front of it."""
    gate = {"program": "first_k_gate", "k": k, "window_us": int(window_us), "direct_action": 1}
    filters = []
    if loss_one_in is not None and loss_kind == "bpf-drop":
        gate["drop_one_in"] = loss_one_in
    elif loss_one_in is not None:
        filters.append(FilterSpec("u32", CLSACT_INGRESS, 1,
                                  {"key": 0, "mask": 0, "offset_bytes": 0, "drop_one_in": loss_one_in}))
    filters.append(FilterSpec("bpf", CLSACT_INGRESS, len(filters) + 1, gate))
    return TcTree((QdiscSpec("clsact", "ffff:", "root"),), (), tuple(filters))


def compile_network(net: Pi2Network, real: Realisation, tau_us: float, calibration_x: np.ndarray,
                    network_path: str | Path | None = None, margin: float | None = None,
                    relay_us: float = DEFAULT_RELAY_US, prune_margin: float | None = DEFAULT_PRUNE_MARGIN,
                    loss: float = 0.0, lead: float = DEFAULT_LEAD,
                    delay_lines: str = DEFAULT_DELAY_LINES, banks: int = DEFAULT_BANKS) -> FabricPlan:
    """Compile `net` for a fabric realising `real`, one model unit lasting `tau_us` µs.

    `calibration_x` (a batch of network inputs) fixes every layer's deadline: its latest K-th
    arrival plus `margin` model units (default: the profile's timeout margin, margin_tau but at least
    margin_us_min), and with
    `prune_margin` (model units; None: keep every synapse) which synapses are pruned. The sample
    period lets every class recover (its event's spread of times, its delay, the spike's own
    token debt) and the relay decode a layer before the next sample reuses it.
    `loss` (a probability, 1/N) is dropped at every neuron port's ingress, where the profile realises loss.
    `lead` (model units; 0: off) spreads each layer's events ahead of their times over at least
    this span, and over all the slack the slowest layer leaves a faster one (module docstring).
    `delay_lines`: "shared" (a delay line per event and distinct delay, counted in a membership
    table), "shared-clone" (the same lines, copied to each member port) or "per-synapse" (a class
    per synapse on each port). `banks` (shared lines; a power of two): samples s and s + 1 … use
    different classes of each line, bank s mod `banks`, so a class is reused every `banks`
    samples and the period only has to let it recover over that many (module docstring,
    overlapping samples). The defaults are `pi2 compile`'s.
    """
    if delay_lines not in DELAY_LINE_KINDS:
        raise PlanError(f"delay lines {delay_lines!r}: expected one of {', '.join(DELAY_LINE_KINDS)}")
    if not (1 <= banks <= MAX_BANKS and banks & (banks - 1) == 0) or (banks > 1 and delay_lines not in SHARED_LINE_KINDS):
        raise PlanError(f"banks {banks}: expected a power of two in 1..{MAX_BANKS}, and 1 with --delay-lines per-synapse "
                        "(its classes are per port, not per line)")
    if not tau_us > 0:
        raise PlanError(f"tau must be > 0 µs, got {tau_us}")
    if not lead >= 0:
        raise PlanError(f"lead must be ≥ 0 model units, got {lead}")
    if prune_margin is not None and not prune_margin >= 0:
        raise PlanError(f"prune margin must be ≥ 0 model units, got {prune_margin}")
    for i, layer in enumerate(net.layers):
        if layer.affine is not None or layer.residual is not None:
            raise PlanError(f"layer {i} has an affine map (a folded BatchNorm) or a residual addition, which the "
                            "fabric's relay does not compute (it applies per-layer s, pooling and rectified scores): "
                            "evaluate it with `pi2 eval`")
        if isinstance(layer, ConvLayer) and layer.padding:
            raise PlanError(f"layer {i} is a convolution with padding {layer.padding}: its padded border would be "
                            "events at T0 that no layer sends; compile an unpadded network (e.g. `pi2 train --arch "
                            "lenet5k`) or evaluate it with `pi2 eval`")
    # A layer's inputs are every value the previous layer passes on (a conv neuron sees a field of them).
    n_in = [int(np.prod(layer.in_shape)) if isinstance(layer, ConvLayer) else layer.n_inputs for layer in net.layers]
    for i, n in enumerate(n_in):
        if 2 * n > MAX_CLASS_MINOR:
            raise PlanError(f"layer {i} has {n} inputs; a port holds at most {MAX_CLASS_MINOR // 2}")
    margin = max(real.margin_tau, real.margin_us_min / tau_us) if margin is None else margin
    loss_one_in = drop_one_in(loss, real)
    if loss_one_in is not None and delay_lines == "shared" and real.loss_kind != "bpf-drop":
        raise PlanError(f"profile {real.profile}: its loss ({real.loss_kind}) drops at a port's ingress, which "
                        "shared delay lines' membership table never sends spikes to; compile with --delay-lines "
                        "shared-clone or per-synapse, or use --profile shaper (the neuron drops)")
    x_cal = np.asarray(calibration_x, dtype=np.float64)
    cal = calibrate(net, x_cal.reshape((len(x_cal),) + tuple(net.input_shape)))
    c = net.constants
    kept = [_kept_synapses(net, li, cal, prune_margin, tau_us) for li in range(len(net.layers))]
    # Whole µs: the gates time out after exactly this window (testbed.kernel.gate), the simulator too.
    windows = [float(round((cal.kth_arrival[li] + margin) * tau_us)) for li in range(len(net.layers))]
    # A spike leaving an htb-primer class charges it its own size too: the class takes
    # delay·spike/(primer − burst) more to recover before the next sample's primer passes at once.
    recover = SPIKE_FRAME_BYTES / (real.primer_bytes - real.burst_bytes) if real.delay_kind == "htb-primer" else 0.0
    # Consecutive samples reuse every class, so the period must outlast, per event, the spread of
    # its times on the calibration data (plus the margin) and its longest class delay with the
    # recovery; and a layer's deadline plus the relay's decoding. A lead adds to both. The
    # slowest layer sets the period; with leads on, every layer then spreads its events over
    # all the lead the period leaves it (at least `lead`), as far as the profile's longest delay
    # allows.
    def drain_us(li: int, source: int, sign: int, delay_us: float) -> float:
        spread = cal.event_range[li][event_index(source, sign, n_in[li])]
        return (spread + margin) * tau_us + delay_us * (1 + recover)

    drains = [max(drain_us(li, i, ev_sign, d) for port in ports for i, ev_sign, d in port)
              for li, ports in enumerate(kept)]
    decodes = [window + relay_us for window in windows]
    # A class serves one sample in `banks`: it needs drain + lead per `banks` periods; a layer's
    # result is decoded `layer_slots` periods after its slot starts, when the next layer needs it.
    reuse = max(drain + lead * tau_us * (1 + recover) for drain in drains) / banks
    ready = max(decode + lead * tau_us for decode in decodes)
    layer_slots = 1 if banks == 1 else min(MAX_BANKS, math.ceil(ready / reuse))
    period_us = max(reuse, ready / layer_slots)
    layers = []
    for li, layer in enumerate(net.layers):
        longest = max(d for port in kept[li] for _, _, d in port)
        room = real.max_delay_us - longest
        if room < lead * tau_us:
            raise PlanError(f"layer {li}: its longest synapse delay {longest:g} µs plus a lead of {lead:g}·τ exceeds "
                            f"the {real.max_delay_us:g} µs profile {real.profile} realises; use a smaller --tau or --lead")
        fits = min((banks * period_us - drains[li]) / (1 + recover), layer_slots * period_us - decodes[li], room)
        spread = max(lead * tau_us, fits) if lead else 0.0
        leads = event_leads(n_in[li], spread)
        shared = delay_lines in SHARED_LINE_KINDS
        ports, port_targets = [], []
        for (j, sign), synapses_of in zip(_port_order(layer.n_neurons), kept[li]):
            events, targets, synapses = [], [], []
            for i, ev_sign, d in synapses_of:
                target = d + leads[event_index(i, ev_sign, n_in[li])]
                realised, rate = realise_delay(target, real)
                events.append((i, ev_sign, rate))
                targets.append(target)
                # Shared lines: the port has no class of its own; its line's class delays the event.
                unshaped = shared or target < real.min_delay_us
                synapses.append(Synapse(i, ev_sign, target, realised, None if unshaped else synapse_classid(i, ev_sign)))
            port_targets.append([(i, ev_sign, t) for (i, ev_sign, _), t in zip(events, targets)])
            tag = f"{li}n{j}{'p' if sign == SIGN_PLUS else 'm'}"
            ports.append(NeuronPort(li, j, sign, layer.k, f"s{tag}", f"l{tag}", tuple(synapses),
                                    TcTree() if shared else _port_tc(li, events, real, targets, 2 * n_in[li]),
                                    _gate_tc(layer.k, windows[li], loss_one_in, real.loss_kind)))
        fanout = "line_neurons" if delay_lines == "shared" else "line_fanout"
        lines, line_tc, fanout_tc = (_shared_lines(li, n_in[li], port_targets, real, fanout, banks) if shared
                                     else ((), TcTree(), TcTree()))
        # The relay pools a hidden conv layer's outputs (the golden model never pools the scores).
        pool = layer.pool if isinstance(layer, ConvLayer) and li < len(net.layers) - 1 else 1
        layers.append(LayerPlan(li, n_in[li], layer.n_neurons, layer.k, f"sw{li}", f"in{li}", windows[li],
                                cal.offset_mk[li], tuple(ports), tuple(leads.tolist()), net.scales[li],
                                tuple(int(d) for d in layer.conv_shape), pool, lines, line_tc, fanout_tc))
    # The realised delays (rate granularity) may hold a class a little longer than the targets.
    period_us = max([period_us] + [drain_us(li, s.source, s.sign, s.delay_us) / banks
                                   for li, layer in enumerate(layers) for p in layer.ports for s in p.synapses])
    network = {"path": None if network_path is None else str(network_path),
               "sha256": None if network_path is None else hashlib.sha256(Path(network_path).read_bytes()).hexdigest(),
               "k": list(net.k), "bits": net.bits, "input_shape": list(net.input_shape)}
    return FabricPlan(real.profile, real.delay_kind, real.gate_kind, {"t0": c.t0, "c": c.c, "s": c.s}, network,
                      Timing(tau_us, period_us, relay_us, real.flood_copy_us, banks, layer_slots),
                      Packets(SPIKE_FRAME_BYTES, real.primer_bytes if real.delay_kind == "htb-primer" else 0),
                      tuple(layers), delay_lines, net.rectified)

"""The live inference loop: inject, let the kernel compute, capture, decode, re-encode.

Samples move through the layers in a pipeline of fixed slots (`Timing`). Slot q starts at
``start + q·period``; in it, layer l takes sample q − D·l (D = `layer_slots`), so each layer has D
samples in flight and a network of L layers D·L. For every layer it takes a sample, the injector
sends that sample's events (a primer and its spike where the delay realisation needs primers) at
its time t·τ after the layer's origin less the event's lead (testbed.plan.fabric_plan), on the
layer's injector link, each spike stamped with the sample's origin in the layer; frames due after
the next slot's start go out in that slot, interleaved with its own (with overlapping samples a
layer's events outlast a period). The kernel delays them (lead included; shared lines in the
classes of the sample's bank) and each port's neuron (testbed.kernel.gate, or the membership
table, testbed.kernel.lines) drops late spikes, counts the first K, sums their kernel RX stamps
and passes one neuron event per (port, sample). Between sends the receiver reads events, and once
a (layer, sample)'s deadline has passed the relay decodes it; a port that counted fewer than K
passed none, and the relay reads its count and sum from the kernel then. The relay never filters
by time nor sees a spike: it turns events into T±, y and the layer's re-encoding pool(ReLU(−s·y))
(`testbed.traffic.decode`, `LayerPlan.relay`),
and the next layer takes the sample D slots later (waiting for the decode if it is late). Nothing
in user space delays, orders or drops a spike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from testbed.errors import PlanError
from testbed.kernel.idle import idle_polling
from testbed.model.encoding import encode
from testbed.plan.fabric_plan import SIGN_PLUS, FabricPlan
from testbed.plan.wire import KIND_EVENT, KIND_PRIMER, KIND_SPIKE, SpikeHeader
from testbed.traffic.capture import ARRIVAL_DTYPE, Receiver
from testbed.traffic.clock import realtime_minus_monotonic_ns
from testbed.traffic.decode import PortRole, decode_layer
from testbed.traffic.inject import Injector, Schedule, pinned
from testbed.traffic.packets import spike_frame, stamp_origin

if TYPE_CHECKING:
    from testbed.fabric.handle import LiveFabric

# Spikes are Ethernet broadcasts, so the layer's bridge floods them to every neuron port. The
# addresses are RFC 2544's benchmarking range and never leave the run's own namespaces.
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
LEAD_NS = 30_000_000  # first slot starts this long after the loop is ready
SLOT_LEAD_NS = 1_000_000  # a slot the loop reaches late starts this long after it is scheduled...
STAMP_NS = 4_000  # ...plus this per spike it still has to stamp (measured 1.3–4 µs each, MNIST's 1568 spikes)


def injector_mac(layer: int) -> str:
    return f"02:70:32:00:00:{layer:02x}"


def injector_ip(layer: int) -> tuple[str, str]:
    return f"198.18.{layer}.1", f"198.18.{layer}.255"


@dataclass(frozen=True)
class _Frame:
    """A frame the loop will send: at `mono_ns` (CLOCK_MONOTONIC), ties broken by `rank`."""

    mono_ns: int
    rank: float
    frame: bytes
    ifname: str
    layer: int


@dataclass
class KernelRun:
    """What the kernel computed for a batch of samples, and how the run went."""

    samples: int
    layers: int
    t_plus: list[np.ndarray]  # per layer (samples, neurons), model units
    t_minus: list[np.ndarray]
    inputs: list[np.ndarray]  # per layer, the values the relay injected (samples, n)
    counts: list[np.ndarray]  # per layer (samples, ports): spikes each port's neuron counted by the deadline
    t_us: list[np.ndarray]  # per layer (samples, ports): the neuron's T, µs after the origin (nan: counted none)
    # per layer (samples, ports): when the relay's socket received the port's neuron event (the K-th spike
    # rewritten), µs after the origin: the K-th arrival at the port plus its delivery to the relay, so an
    # upper bound of it (nan: fewer than K by the deadline, or the event came after it)
    kth_us: list[np.ndarray]
    lateness_us: list[list[float]]  # per layer: kernel TX time − scheduled time of each injected frame
    arrivals: list[np.ndarray] = field(default_factory=list)  # raw captures, ARRIVAL_DTYPE
    frames: list[bytes] = field(default_factory=list)  # received frames when kept (pcap)
    injected: list[tuple[int, bytes]] = field(default_factory=list)  # (TX ns, frame) when kept
    wall_s: float = 0.0
    late_slots: int = 0  # slots whose schedule started after their time (the loop fell behind)
    receiver_drops: int = 0
    injector_refused: int = 0  # injected frames the kernel refused (fabric CPU's backlog full)
    idle_polling: bool = False  # the CPUs polled instead of sleeping when idle (testbed.kernel.idle)

    @property
    def y(self) -> list[np.ndarray]:
        return [p - m for p, m in zip(self.t_plus, self.t_minus)]


def _port_roles(fabric: LiveFabric, layer: int) -> dict[int, PortRole]:
    return {port.ifindex: PortRole(layer, port.neuron, port.sign) for port in fabric.ports[layer]}


def _layer_events(plan: FabricPlan, layer: int, sample: int, x: np.ndarray, ifname: str,
                  keep: list[tuple[int, bytes, str]], spikes: list[int], ranks: list[float],
                  earliest_us: np.ndarray) -> None:
    """Append (offset ns from the slot base: origin + t·τ − lead, frame, ifname) for one layer's events of one sample,
    to `spikes` the positions of the spike frames (which the slot stamps with the sample's origin once it
    knows its start), and to `ranks` the event's shortest delay on any port (`earliest_us`, (n, 2)),
    which orders simultaneous events."""
    tau_ns = plan.timing.tau_us * 1e3
    layer_plan = plan.layers[layer]
    src_mac, (src_ip, dst_ip) = injector_mac(layer), injector_ip(layer)
    t_plus, t_minus = encode(x, plan.constants["t0"])
    primer = plan.packets.primer_bytes
    origin_us, leads_us = layer_plan.origin_us, layer_plan.leads_us  # origin_us is a max over 2n leads: once
    seq = 0
    for sign, times in ((0, t_plus), (1, t_minus)):
        for source, t in enumerate(times.tolist()):
            offset = int(round(t * tau_ns + (origin_us - leads_us[seq]) * 1e3))
            if primer:
                head = SpikeHeader(layer, source, sign, sample, seq, KIND_PRIMER)
                keep.append((offset, spike_frame(src_mac, BROADCAST_MAC, src_ip, dst_ip, head, primer), ifname))
                ranks.append(earliest_us[source, sign])
            head = SpikeHeader(layer, source, sign, sample, seq, KIND_SPIKE)
            spikes.append(len(keep))
            keep.append((offset, spike_frame(src_mac, BROADCAST_MAC, src_ip, dst_ip, head), ifname))
            ranks.append(earliest_us[source, sign])
            seq += 1


def _deadline_reads(fabric: LiveFabric, layer: int, sample: int, have: set[int]) -> np.ndarray:
    """Neuron events, as `ARRIVAL_DTYPE` rows (t_ns 0: read, not received), for the ports of `layer`
    that passed none for `sample` (fewer than K spikes by the deadline): count and sum read from
    each port's neuron state. A port that counted nothing gives no row."""
    rows = []
    for port in fabric.ports[layer]:
        if port.ifindex not in have:
            state = port.gate.partial(sample)
            if state.count:
                rows.append((port.ifindex, layer, 0, 0, sample, state.count, KIND_EVENT, state.sum_ns, 0))
    return np.array(rows, dtype=ARRIVAL_DTYPE)


def run_inference(plan: FabricPlan, fabric: LiveFabric, x: np.ndarray, *, inject_cpu: int | None = None,
                  keep_frames: bool = False, progress: Callable[[int], None] | None = None) -> KernelRun:
    """Classify the batch `x` (samples, n_inputs) on the live fabric built from `plan`."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if x.shape[1] != plan.layers[0].n_inputs:
        raise PlanError(f"inputs have {x.shape[1]} values; the plan's first layer takes {plan.layers[0].n_inputs}")
    n_samples, n_layers = len(x), len(plan.layers)
    tau_ns = plan.timing.tau_us * 1e3
    period_ns = int(round(plan.timing.period_us * 1e3))
    run = KernelRun(
        samples=n_samples, layers=n_layers,
        t_plus=[np.full((n_samples, layer.n_neurons), np.nan) for layer in plan.layers],
        t_minus=[np.full((n_samples, layer.n_neurons), np.nan) for layer in plan.layers],
        inputs=[x] + [np.full((n_samples, layer.n_inputs), np.nan) for layer in plan.layers[1:]],
        counts=[np.zeros((n_samples, len(layer.ports)), dtype=np.int64) for layer in plan.layers],
        t_us=[np.full((n_samples, len(layer.ports)), np.nan) for layer in plan.layers],
        kth_us=[np.full((n_samples, len(layer.ports)), np.nan) for layer in plan.layers],
        lateness_us=[[] for _ in plan.layers],
    )
    delays_us = [layer.port_delays_us() for layer in plan.layers]
    # Events injected at the same instant reach the kernel one after another, and the kernel works
    # through a burst (e.g. every zero input at T0) in that order: the ones that can arrive first
    # (shortest delay on some port) go first, so queueing lateness falls on the least urgent.
    earliest_us = [d.min(axis=0) for d in delays_us]
    roles = [_port_roles(fabric, li) for li in range(n_layers)]
    port_neuron = [np.array([port.neuron for port in fabric.ports[li]]) for li in range(n_layers)]
    port_sign = [np.array([port.sign for port in fabric.ports[li]]) for li in range(n_layers)]
    port_index = [{port.ifindex: q for q, port in enumerate(fabric.ports[li])} for li in range(n_layers)]
    stride = plan.timing.layer_slots
    # (layer, sample) in flight → (its origin, CLOCK_REALTIME ns; its deadline, CLOCK_MONOTONIC ns)
    in_flight: dict[tuple[int, int], tuple[int, int]] = {}
    events_of: dict[tuple[int, int], list[np.ndarray]] = {}
    pending: list[_Frame] = []  # frames due at or after the slot that follows the one that built them

    def finish(li: int, sample: int) -> None:
        """Decode the neuron events of (layer, sample), its deadline passed: T±, y, the next layer's inputs."""
        origin_real, _ = in_flight.pop((li, sample))
        layer = plan.layers[li]
        got = events_of.pop((li, sample), [])
        mine = np.concatenate(got) if got else np.zeros(0, dtype=ARRIVAL_DTYPE)
        q = np.array([port_index[li].get(i, -1) for i in mine["ifindex"].tolist()], dtype=np.int64)
        run.kth_us[li][sample, q[q >= 0]] = (mine["t_ns"][q >= 0] - origin_real) / 1e3
        events = np.concatenate([mine, _deadline_reads(fabric, li, sample, set(mine["ifindex"].tolist()))])
        decoded = decode_layer(events, roles[li], samples=np.array([sample]), tau_ns=tau_ns, k=layer.k,
                               deadline=layer.window_us / plan.timing.tau_us, s=layer.s)
        run.t_plus[li][sample] = decoded.t_plus[0]
        run.t_minus[li][sample] = decoded.t_minus[0]
        plus = port_sign[li] == SIGN_PLUS
        counts = np.where(plus, decoded.count_plus[0][port_neuron[li]], decoded.count_minus[0][port_neuron[li]])
        t = np.where(plus, decoded.t_plus[0][port_neuron[li]], decoded.t_minus[0][port_neuron[li]])
        run.counts[li][sample] = counts
        run.t_us[li][sample] = np.where(counts > 0, t * plan.timing.tau_us, np.nan)
        if li + 1 < n_layers:
            run.inputs[li + 1][sample] = layer.relay(decoded.y)[0]  # pool(ReLU(−s·y)), the plan's
        elif progress is not None:
            progress(1)

    def settle(until_mono_ns: int) -> None:
        """Read neuron events until `until_mono_ns`, decoding every (layer, sample) whose deadline
        comes by then, in deadline order."""
        while True:
            due = min(in_flight, key=lambda key: in_flight[key][1], default=None)
            stop = until_mono_ns if due is None else min(until_mono_ns, in_flight[due][1])
            capture = receiver.collect(stop, keep_frames=keep_frames)
            run.receiver_drops += capture.dropped
            run.arrivals.append(capture.arrivals)
            if keep_frames and capture.frames:
                run.frames += list(capture.frames)
            got = capture.arrivals[capture.arrivals["kind"] == KIND_EVENT]
            for key in set(zip(got["layer"].tolist(), got["sample"].tolist())):
                events_of.setdefault(key, []).append(got[(got["layer"] == key[0]) & (got["sample"] == key[1])])
            if due is None or stop < in_flight[due][1]:
                return
            finish(*due)

    def send(start: int, offsets: list[int], frames: list[bytes], ifnames: list[str], layers: list[int]) -> None:
        """Send `frames` at `start` (CLOCK_MONOTONIC ns) + their offsets, in order."""
        if not frames:
            return
        schedule = Schedule(offsets, frames, ifnames)
        report = injector.send(schedule, start_mono_ns=start)
        run.injector_refused += report.refused
        late = (report.send_real_ns - start - real_minus_mono - schedule.offsets_ns) / 1e3
        for li, lateness in zip(layers, late.tolist()):
            run.lateness_us[li].append(lateness)
        if keep_frames:
            run.injected += list(zip(report.send_real_ns.tolist(), schedule.frames))

    def send_frames(frames: list[_Frame]) -> None:
        if frames:
            start = frames[0].mono_ns
            send(start, [f.mono_ns - start for f in frames], [f.frame for f in frames], [f.ifname for f in frames],
                 [f.layer for f in frames])

    # The whole loop (pacing, capture, decoding) stays on the injector's CPU: the kernel's packet
    # work is steered to the others, and must not wait there behind the relay's Python. No CPU
    # sleeps meanwhile, so timers release spikes without a wake-up's delay.
    with pinned(inject_cpu), idle_polling() as run.idle_polling, Injector.open(None, fabric.host_netns) as injector, \
            Receiver.open(fabric.host_netns) as receiver:
        receiver.discard()
        # One clock offset for the run: the origins stamped into spikes (which the gates time out
        # from) and the origins the relay decodes from are the same numbers.
        real_minus_mono = realtime_minus_monotonic_ns()
        next_base = time.monotonic_ns() + LEAD_NS
        began = time.perf_counter()
        for slot in range(n_samples + stride * (n_layers - 1)):
            active = [(li, slot - stride * li) for li in range(n_layers) if 0 <= slot - stride * li < n_samples]
            for li, sample in active:  # a layer's inputs are the previous layer's result: decoded by now, or wait
                if li and (li - 1, sample) in in_flight:
                    settle(in_flight[(li - 1, sample)][1])
            pairs: list[tuple[int, bytes, str]] = []
            owner: list[int] = []
            spikes: list[int] = []
            ranks: list[float] = []
            for li, sample in active:
                before = len(pairs)
                _layer_events(plan, li, sample, run.inputs[li][sample], fabric.inject_ifs[li], pairs, spikes, ranks,
                              earliest_us[li])
                owner += [li] * (len(pairs) - before)
            # Stable sort: a primer, with its spike's key, stays right before its spike.
            order = sorted(range(len(pairs)), key=lambda i: (pairs[i][0], ranks[i]))
            # Slots start a period apart, or later when the loop falls behind: a slot never starts
            # before its classes drained (banks included), so only throughput suffers, not timing.
            # The frames are built and ordered first, so a late slot's lead is not spent on that;
            # only the stamping of its spikes' origins (which need the slot's start) comes after.
            base = max(next_base, time.monotonic_ns() + SLOT_LEAD_NS + STAMP_NS * len(spikes))
            run.late_slots += base > next_base
            next_base = base + period_ns
            base_real = base + real_minus_mono
            origin_real = {li: base_real + int(round(plan.layers[li].origin_us * 1e3)) for li, _ in active}
            for li, sample in active:
                layer = plan.layers[li]
                in_flight[(li, sample)] = (origin_real[li], base + int((layer.origin_us + layer.window_us) * 1e3))
            for i in spikes:
                offset, frame, ifname = pairs[i]
                pairs[i] = (offset, stamp_origin(frame, origin_real[owner[i]]), ifname)
            if not pending and (not order or base + pairs[order[-1]][0] < next_base):
                # One sample per layer in flight (or a slot whose frames all fit it): sent as ordered,
                # with nothing to merge, so no frame waits for Python work after its slot began.
                send(base, [pairs[i][0] for i in order], [pairs[i][1] for i in order], [pairs[i][2] for i in order],
                     [owner[i] for i in order])
            else:
                # This slot's frames and those earlier slots left for it, in time order (stable, as
                # above); frames due after the next slot's start wait for it (with overlapping
                # samples a layer's events outlast a period).
                frames = pending + [_Frame(base + pairs[i][0], ranks[i], pairs[i][1], pairs[i][2], owner[i])
                                    for i in order]
                frames.sort(key=lambda f: (f.mono_ns, f.rank))
                cut = next((j for j, f in enumerate(frames) if f.mono_ns >= next_base), len(frames))
                pending = frames[cut:]
                send_frames(frames[:cut])
            settle(next_base - SLOT_LEAD_NS - STAMP_NS * len(spikes))  # read events until the next slot is due
        send_frames(pending)
        settle(max((deadline for _, deadline in in_flight.values()), default=0))
        run.wall_s = time.perf_counter() - began
    return run

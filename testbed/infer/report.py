"""What an inference run reports: accuracies, agreement, timing errors, throughput, drops.

Three predictions are compared per sample: the kernel's (decoded from kernel RX timestamps),
the plan simulator's (`testbed.sim`: the realised delays, flood order, gates, deadlines), and
the golden model's (the network itself with its stored quantisation). Kernel vs simulation is
the headline: it measures the kernel alone, since both execute the same plan.

Timing error per layer compares each neuron event's T (the mean of the K earliest kernel-stamped
arrivals, computed by the port's eBPF neuron) with the simulator's *given the inputs the kernel
relay actually injected into that layer*, so an error upstream does not count again downstream.
Single spikes never reach user space, so there is no per-spike error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from testbed.infer.session import KernelRun
from testbed.model.network import Pi2Network
from testbed.plan.fabric_plan import FabricPlan
from testbed.plan.tc import drop_probability
from testbed.sim.executor import simulate, simulate_layer

if TYPE_CHECKING:
    from testbed.infer.autotau import TauChoice


@dataclass(frozen=True)
class LayerStats:
    layer: int
    spikes_expected: int  # K per port per sample
    spikes_received: int  # spikes the ports' neurons counted by the deadline
    ports_short: int  # (sample, port) pairs whose neuron counted fewer than K spikes by the deadline
    error_us_mean: float  # kernel T − simulated T of each (sample, port) neuron event, µs
    error_us_median: float
    error_us_sd: float
    error_us_p99: float  # of |error|
    inject_late_us_median: float
    inject_late_us_p99: float
    kth_late_us_p99: float  # when each port's K-th spike reached the relay − its simulated arrival at the port, µs:
    kth_late_us_max: float  # at most how much of the port's slack before the deadline the kernel used (both gave K)


@dataclass(frozen=True)
class InferenceReport:
    samples: int
    dataset: str
    backend: str
    profile: str
    tau_us: float
    loss: float  # drop probability per spike at each neuron port; kernel and simulation draw independently
    kernel_accuracy: float
    sim_accuracy: float
    golden_accuracy: float
    kernel_sim_agreement: float
    kernel_golden_agreement: float
    sim_golden_agreement: float
    samples_per_s: float
    synaptic_events_per_s: float  # spike copies reaching neuron ports per second (each delayed, or dropped if pruned)
    packets_per_sample: dict[str, int]
    wall_s: float
    late_slots: int
    receiver_drops: int
    injector_refused: int
    idle_polling: bool  # CPUs polled instead of sleeping during the run (testbed.kernel.idle)
    layers: tuple[LayerStats, ...]
    gates: tuple[dict[str, int], ...]  # per layer, summed over ports: why spikes were dropped
    warnings: tuple[str, ...]  # signs that the kernel could not keep up with the plan, and what to do
    tau_choice: dict[str, Any] | None = None  # how --tau auto chose τ (testbed.infer.autotau.TauChoice), None if given
    delay_lines: str = "per-synapse"  # the plan's design: "shared" (membership table), "shared-clone" or "per-synapse"
    cluster: dict[str, Any] | None = None  # --cluster: placement and measured inter-host latencies

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


def layer_stats(plan: FabricPlan, run: KernelRun, li: int, port_offsets_us: np.ndarray | None = None) -> LayerStats:
    layer = plan.layers[li]
    simulated = simulate_layer(plan, layer, run.inputs[li], port_offsets_us=port_offsets_us)
    predicted = simulated.t_us
    kernel = run.t_us[li]
    both = np.isfinite(predicted) & np.isfinite(kernel)
    error = (kernel - predicted)[both]
    late = np.asarray(run.lateness_us[li])
    kth_late = kth_lateness_us(simulated.passed_us, run.kth_us[li])
    return LayerStats(
        layer=li, spikes_expected=int(run.samples * len(layer.ports) * layer.k),
        spikes_received=int(run.counts[li].sum()),
        ports_short=int((run.counts[li] < layer.k).sum()),
        error_us_mean=float(error.mean()) if error.size else float("nan"),
        error_us_median=_percentile(error, 50), error_us_sd=float(error.std()) if error.size else float("nan"),
        error_us_p99=_percentile(np.abs(error), 99),
        inject_late_us_median=_percentile(late, 50), inject_late_us_p99=_percentile(late, 99),
        kth_late_us_p99=_percentile(kth_late, 99), kth_late_us_max=float(kth_late.max()) if kth_late.size else float("nan"))


def kth_lateness_us(passed_us: np.ndarray, kth_us: np.ndarray) -> np.ndarray:
    """Kernel K-th arrival − simulated K-th arrival (µs) of each (sample, port) where both counted K
    (`passed_us`: the simulator's counted arrivals, (samples, ports, K); `kth_us`: `KernelRun.kth_us`, which
    includes the event's way from the port to the relay, so this bounds the port's lateness from above).
    A neuron misses spikes when its lateness exceeds the port's slack, the deadline minus its K-th arrival."""
    full = np.isfinite(passed_us).all(axis=2) & np.isfinite(kth_us)
    return (kth_us - passed_us.max(axis=2))[full]


def _sum_counters(per_port: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counters in per_port:
        for key, value in counters.items():
            if key not in ("ifname", "neuron", "sign"):
                total[key] = total.get(key, 0) + int(value)
    return total


def plan_loss(plan: FabricPlan) -> float:
    """The drop probability per spike the plan asks its ports for (0: none)."""
    return max(drop_probability(p.gate_tc) for layer in plan.layers for p in layer.ports)


LATE_FRACTION_OF_TAU = 0.05  # a median arrival error beyond this many τ means the kernel fell behind


def kernel_warnings(layers: tuple[LayerStats, ...], tau_us: float, loss: float) -> tuple[str, ...]:
    """What a reader of the report must not miss: spikes that never came (without loss, every
    port gets its K), and arrivals far off the plan, both signs of a fabric CPU that could not
    keep up at this τ."""
    found = []
    for row in layers:
        if not loss and row.spikes_received < row.spikes_expected:
            found.append(f"layer {row.layer}: {row.spikes_expected - row.spikes_received} of {row.spikes_expected} "
                         f"spikes the neurons should have counted never arrived in time ({row.ports_short} sample-ports "
                         "got fewer than K)")
        if abs(row.error_us_median) > LATE_FRACTION_OF_TAU * tau_us:
            found.append(f"layer {row.layer}: neuron events come a median {row.error_us_median:.0f} µs off the plan, "
                         f"{abs(row.error_us_median) / tau_us:.2f} τ")
    if found:
        found.append("the kernel could not keep up with this τ: use a larger --tau")
    return tuple(found)


def build_report(plan: FabricPlan, net: Pi2Network, run: KernelRun, x: np.ndarray, labels: np.ndarray,
                 dataset: str, backend: str, gate_counters: list[list[dict[str, int]]],
                 tau_choice: TauChoice | None = None, cluster: Any = None) -> InferenceReport:
    """`cluster`: a fabric spread over hosts (testbed.cluster.timing.ClusterLayout): the
    simulation adds its measured inter-host latencies to each port's arrivals."""
    kernel_pred = plan.scores(run.y[-1]).argmax(axis=1)
    offsets = None if cluster is None else cluster.port_offsets_us
    sim_pred = simulate(plan, x, port_offsets_us=offsets).predictions
    golden_pred = net.with_bits(plan.network["bits"]).predict(x.reshape((len(x),) + tuple(net.input_shape)))  # x is flat
    layers = tuple(layer_stats(plan, run, li, None if offsets is None else offsets[li]) for li in range(len(plan.layers)))
    loss = plan_loss(plan)
    events = sum(2 * layer.n_inputs * len(layer.ports) for layer in plan.layers)
    rate = run.samples / run.wall_s if run.wall_s > 0 else float("nan")
    return InferenceReport(
        samples=run.samples, dataset=dataset, backend=backend, profile=plan.profile, tau_us=plan.timing.tau_us,
        loss=loss,
        kernel_accuracy=float(np.mean(kernel_pred == labels)), sim_accuracy=float(np.mean(sim_pred == labels)),
        golden_accuracy=float(np.mean(golden_pred == labels)),
        kernel_sim_agreement=float(np.mean(kernel_pred == sim_pred)),
        kernel_golden_agreement=float(np.mean(kernel_pred == golden_pred)),
        sim_golden_agreement=float(np.mean(sim_pred == golden_pred)),
        samples_per_s=rate, synaptic_events_per_s=rate * events, packets_per_sample=plan.packets_per_sample,
        wall_s=run.wall_s, late_slots=run.late_slots, receiver_drops=run.receiver_drops,
        injector_refused=run.injector_refused, idle_polling=run.idle_polling,
        layers=layers, gates=tuple(_sum_counters(per_port) for per_port in gate_counters),
        warnings=kernel_warnings(layers, plan.timing.tau_us, loss),
        tau_choice=None if tau_choice is None else tau_choice.to_dict(), delay_lines=plan.delay_lines,
        cluster=None if cluster is None else cluster.to_dict())

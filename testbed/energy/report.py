"""One energy report: a workload on every platform, the sweeps, and (for the brain) the projection.

This is the single library call behind `pi2 energy`; the CLI only parses and renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from testbed.energy.model import (EnergyBreakdown, Fabric, Workload, aer_bits, brain_workload, compare, fabric,
                                  packet_bits, pi2_energy, sweep, tree_levels, tree_links, workload_from_arch,
                                  workload_from_network)
from testbed.energy.platforms import PlatformTable, load_platforms
from testbed.errors import ModelError

PJ_PER_BIT_SWEEP = tuple(float(v) for v in np.geomspace(0.01, 20.0, 13))
BANDWIDTH_SWEEP_GBPS = (10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0)
HUNDREDS_OF_WATTS = (100.0, 1000.0)  # the claim's band, W


def hundreds_of_watts(power_w: float) -> str:
    """Where a power sits against the claim "hundreds of watts" (100 W ≤ P < 1 kW)."""
    low, high = HUNDREDS_OF_WATTS
    if power_w < low:
        return "below"
    return "within" if power_w < high else "above"


@dataclass(frozen=True)
class BrainProjection:
    """π²'s power for one second of brain activity per second, per fabric generation and rate."""

    assumptions: Mapping[str, object]
    rows: tuple[Mapping[str, object], ...]  # per generation: power at the assumed rate and the rate range
    differential_w: float  # the selected fabric with π²'s differential encoding (×4 arrivals)
    brain_power_w: float

    def to_dict(self) -> dict[str, object]:
        return {"assumptions": dict(self.assumptions), "generations": [dict(r) for r in self.rows],
                "differential_power_w": self.differential_w, "brain_power_w": self.brain_power_w,
                "claim_band_w": list(HUNDREDS_OF_WATTS)}


@dataclass(frozen=True)
class EnergyReport:
    workload: Workload
    fabric: Fabric
    rate_hz: float
    systems: tuple[EnergyBreakdown, ...]  # π² on the chosen fabric, then conventional platforms
    generations: tuple[EnergyBreakdown, ...]  # π² on every generation as tabled
    sweep_pj_per_bit: tuple[Mapping[str, object], ...]
    sweep_bandwidth: tuple[Mapping[str, object], ...]
    brain: BrainProjection | None

    def layer_rows(self) -> list[dict[str, object]]:
        radix = self.fabric.switch_radix
        return [{"layer": layer.name, "events": layer.events, "fanout_ports": layer.fanout_ports,
                 "arrivals": layer.arrivals, "kept_arrivals": layer.kept_arrivals,
                 "kept_fraction": layer.kept_fraction, "links_per_event": tree_links(layer.fanout_ports, radix),
                 "hops_per_arrival": len(tree_levels(layer.fanout_ports, radix)) + 1}
                for layer in self.workload.layers]

    def to_dict(self) -> dict[str, object]:
        wl, fab = self.workload, self.fabric
        return {
            "workload": {"name": wl.name, "per": wl.per, "events": wl.events, "arrivals": wl.arrivals,
                         "synaptic_ops": wl.arrivals, "bits_per_event": packet_bits(wl, fab),
                         "aer_bits": aer_bits(wl, fab.aer_header_bits), "assumptions": dict(wl.assumptions),
                         "layers": self.layer_rows()},
            "fabric": {**fab.__dict__, "static_pj_per_bit": fab.static_pj_per_bit},
            "rate_hz": self.rate_hz,
            "systems": [s.to_dict(self.rate_hz) for s in self.systems],
            "generations": [g.to_dict(self.rate_hz) for g in self.generations],
            "sweep_pj_per_bit": list(self.sweep_pj_per_bit),
            "sweep_bandwidth_gbps": list(self.sweep_bandwidth),
            "brain": None if self.brain is None else self.brain.to_dict(),
        }


def brain_projection(table: PlatformTable, fab: Fabric, workload: Workload) -> BrainProjection:
    """π² at brain scale on every generation, at the assumed rate and at both ends of the rate range."""
    assumptions = dict(workload.assumptions)
    low, high = table.brain.rate_range_hz
    rate = float(assumptions["rate_hz"])
    rows = []
    for name in table.generations:
        gen = fabric(table, name)
        power = pi2_energy(workload, gen).total_j  # one second of activity per second: J/s = W
        rows.append({"generation": name, "link": gen.link, "packet": gen.packet, "power_w": power,
                     "power_w_at_rate_low": power * low / rate, "power_w_at_rate_high": power * high / rate,
                     "eta": pi2_energy(workload, gen).eta, "vs_hundreds_of_watts": hundreds_of_watts(power)})
    differential = brain_workload(table.brain, assumptions["neurons"], assumptions["synapses_per_neuron"],
                                  rate, differential=True)
    return BrainProjection(assumptions={**assumptions, "rate_range_hz": [low, high]}, rows=tuple(rows),
                           differential_w=pi2_energy(differential, fab).total_j, brain_power_w=table.brain.power_w)


def energy_report(workload: Workload, table: PlatformTable, fab: Fabric, rate_hz: float) -> EnergyReport:
    """Everything `pi2 energy` shows: comparison, generations, sweeps and, for the brain, the projection."""
    if not rate_hz > 0:
        raise ModelError(f"inference rate must be > 0 Hz, got {rate_hz!r}")
    if workload.per == "second":
        rate_hz = 1.0  # the workload is one second of activity; its energy per second is its power
    return EnergyReport(
        workload=workload, fabric=fab, rate_hz=rate_hz,
        systems=tuple(compare(workload, table, fab)),
        generations=tuple(pi2_energy(workload, fabric(table, name)) for name in table.generations),
        sweep_pj_per_bit=tuple(sweep(workload, table, fab, "pj_per_bit", PJ_PER_BIT_SWEEP)),
        sweep_bandwidth=tuple(sweep(workload, table, fab, "bandwidth_gbps", BANDWIDTH_SWEEP_GBPS)),
        brain=brain_projection(table, fab, workload) if workload.per == "second" else None,
    )



def energy_for(net_path: str | None, workload_spec: str | None, ks: Sequence[int] | None, generation: str,
               rate_hz: float, link: str | None = None, overrides: Mapping[str, object] | None = None,
               brain: Mapping[str, object] | None = None, measured: Mapping[int, float] | None = None,
               platforms_path: str | None = None) -> tuple[EnergyReport, PlatformTable]:
    """Build the workload (a network file, ``brain`` or ``mlp:…``), the fabric, and the report.

    `brain` holds optional neurons / synapses_per_neuron / rate_hz / differential for ``brain``;
    `measured` maps layer index to measured events per inference.
    """
    table = load_platforms(platforms_path)
    if (net_path is None) == (workload_spec is None):
        raise ModelError("give either a network file or --workload (brain or mlp:N0-N1-…), not both or neither")
    if net_path is not None:
        from testbed.model.netfile import load_network  # the network file format lives with the model

        workload = workload_from_network(load_network(net_path), name=str(net_path))
    elif workload_spec == "brain":
        workload = brain_workload(table.brain, **dict(brain or {}))
    else:
        if ks is None:
            raise ModelError(f"workload {workload_spec}: give one K per layer with --k, e.g. --k 1,1")
        workload = workload_from_arch(workload_spec, ks)
    if measured:
        workload = workload.with_measured(measured)
    fab = fabric(table, generation, link, **dict(overrides or {}))
    return energy_report(workload, table, fab, rate_hz), table

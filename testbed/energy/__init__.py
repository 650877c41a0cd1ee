"""Spikes to joules: π²'s energy and η against conventional neuromorphic platforms, up to brain scale.

The equations are in `testbed.energy.model` (and docs/energy.md); every figure they use is in
`platforms.yaml` with its source.
"""

from testbed.energy.model import (EnergyBreakdown, Fabric, LayerTraffic, Workload, aer_bits, brain_workload,
                                  compare, conventional_energy, events_from_traces, fabric, pi2_energy, sweep,
                                  tree_links, workload_from_arch, workload_from_network, workload_from_shapes)
from testbed.energy.platforms import PlatformTable, load_platforms
from testbed.energy.report import (BrainProjection, EnergyReport, brain_projection, energy_for, energy_report,
                                   hundreds_of_watts)

__all__ = ["BrainProjection", "EnergyBreakdown", "EnergyReport", "Fabric", "LayerTraffic", "PlatformTable",
           "Workload", "aer_bits", "brain_projection", "brain_workload", "compare", "conventional_energy",
           "energy_for", "energy_report", "events_from_traces", "fabric", "hundreds_of_watts", "load_platforms", "pi2_energy",
           "sweep", "tree_links", "workload_from_arch", "workload_from_network", "workload_from_shapes"]

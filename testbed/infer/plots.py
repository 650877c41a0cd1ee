"""Pictures of a run: one sample's neuron events per layer (kernel vs simulation), and the error histogram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from testbed.atomic_file import write_figure  # noqa: E402
from testbed.infer.session import KernelRun  # noqa: E402
from testbed.plan.fabric_plan import SIGN_PLUS, FabricPlan  # noqa: E402
from testbed.sim.executor import simulate_layer  # noqa: E402


def raster(plan: FabricPlan, run: KernelRun, sample: int, path: Path) -> Path:
    """The neuron events of `sample` on every neuron port (T: the mean of the K earliest arrivals), one
    panel per layer."""
    fig, axes = plt.subplots(1, len(plan.layers), figsize=(5 * len(plan.layers), 4.5), squeeze=False)
    for li, (layer, ax) in enumerate(zip(plan.layers, axes[0])):
        predicted = simulate_layer(plan, layer, run.inputs[li][sample:sample + 1]).t_us[0]
        kernel = run.t_us[li][sample]
        ports = np.arange(len(layer.ports))
        colours = ["tab:blue" if port.sign == SIGN_PLUS else "tab:red" for port in layer.ports]
        ax.scatter(kernel / 1e3, ports, s=14, c=colours, zorder=3)
        ax.scatter(predicted / 1e3, ports, s=40, facecolors="none", edgecolors="k", linewidths=0.7, zorder=2)
        ax.axvline(layer.window_us / 1e3, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"layer {li}: {layer.n_neurons} neurons, K = {layer.k}")
        ax.set_xlabel("T after the layer's origin (ms)")
        ax.set_ylabel("neuron port (z⁺ blue, z⁻ red)")
    axes[0][0].scatter([], [], s=40, facecolors="none", edgecolors="k", label="simulated")
    axes[0][0].scatter([], [], s=14, color="tab:blue", label="kernel neuron (mean of K RX stamps)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"sample {sample}: the ports' neuron events (dashed: deadline)")
    fig.tight_layout()
    write_figure(fig, path, 110)
    plt.close(fig)
    return path


def error_histogram(plan: FabricPlan, run: KernelRun, path: Path) -> Path:
    """Kernel − simulated T of every neuron event, per layer."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for li, layer in enumerate(plan.layers):
        predicted = simulate_layer(plan, layer, run.inputs[li]).t_us
        error = (run.t_us[li] - predicted)[np.isfinite(predicted) & np.isfinite(run.t_us[li])]
        if error.size:
            ax.hist(error, bins=80, alpha=0.6, label=f"layer {li} (median {np.median(error):.0f} µs)")
    ax.set_xlabel("kernel − simulated T (µs)")
    ax.set_ylabel("neuron events")
    ax.set_title(f"neuron timing error, τ = {plan.timing.tau_us:g} µs, profile {plan.profile}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(fig, path, 110)
    plt.close(fig)
    return path

"""Pictures of a run: one sample's spikes per layer (kernel vs simulation), and the error histogram."""

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
    """Gated spike arrivals of `sample` on every neuron port, one panel per layer."""
    fig, axes = plt.subplots(1, len(plan.layers), figsize=(5 * len(plan.layers), 4.5), squeeze=False)
    for li, (layer, ax) in enumerate(zip(plan.layers, axes[0])):
        predicted = simulate_layer(plan, layer, run.inputs[li][sample:sample + 1]).passed_us[0]
        kernel = run.passed_us[li][sample]
        for q, port in enumerate(layer.ports):
            colour = "tab:blue" if port.sign == SIGN_PLUS else "tab:red"
            ax.scatter(kernel[q] / 1e3, np.full(layer.k, q), s=14, color=colour, zorder=3)
            ax.scatter(predicted[q] / 1e3, np.full(layer.k, q), s=40, facecolors="none", edgecolors="k",
                       linewidths=0.7, zorder=2)
        ax.axvline(layer.window_us / 1e3, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"layer {li}: {layer.n_neurons} neurons, K = {layer.k}")
        ax.set_xlabel("arrival after the layer's base time (ms)")
        ax.set_ylabel("neuron port (z⁺ blue, z⁻ red)")
    axes[0][0].scatter([], [], s=40, facecolors="none", edgecolors="k", label="simulated")
    axes[0][0].scatter([], [], s=14, color="tab:blue", label="kernel (RX timestamp)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"sample {sample}: spikes the first-K gates passed (dashed: deadline)")
    fig.tight_layout()
    write_figure(fig, path, 110)
    plt.close(fig)
    return path


def error_histogram(plan: FabricPlan, run: KernelRun, path: Path) -> Path:
    """Kernel − simulated arrival time of every gated spike, per layer."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for li, layer in enumerate(plan.layers):
        predicted = simulate_layer(plan, layer, run.inputs[li]).passed_us
        error = (run.passed_us[li] - predicted)[np.isfinite(predicted) & np.isfinite(run.passed_us[li])]
        if error.size:
            ax.hist(error, bins=80, alpha=0.6, label=f"layer {li} (median {np.median(error):.0f} µs)")
    ax.set_xlabel("kernel − simulated arrival (µs)")
    ax.set_ylabel("gated spikes")
    ax.set_title(f"arrival-time error, τ = {plan.timing.tau_us:g} µs, profile {plan.profile}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(fig, path, 110)
    plt.close(fig)
    return path

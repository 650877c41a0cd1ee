"""The energy report's three figures as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from testbed.atomic_file import write_figure
from testbed.energy.model import brain_workload
from testbed.energy.platforms import PlatformTable
from testbed.energy.report import HUNDREDS_OF_WATTS, BrainProjection, EnergyReport, brain_projection
from testbed.errors import ModelError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def _series(rows, knob: str, metric: str) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        for system, values in row["systems"].items():
            xs, ys = out.setdefault(system, ([], []))
            xs.append(row[knob])
            ys.append(values[metric])
    return out


def _style(system: str) -> dict[str, object]:
    return {"color": "black", "linewidth": 2.5} if system.startswith("π²") else {"linewidth": 1.2, "alpha": 0.85}


def write_plots(report: EnergyReport, table: PlatformTable, out_dir: str | Path) -> list[Path]:
    """Energy vs pJ/bit, η vs bandwidth, and brain-scale power per fabric generation."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"plots directory {out}: cannot create ({exc.strerror})") from exc
    plt = _pyplot()
    unit = "J per second of activity" if report.workload.per == "second" else "J per inference"
    paths = []

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for system, (xs, ys) in _series(report.sweep_pj_per_bit, "pj_per_bit", "energy_j").items():
        ax.loglog(xs, ys, label=system, **_style(system))
    ax.axvline(report.fabric.pj_per_bit, color="grey", linestyle=":", label=f"{report.fabric.link} ({report.fabric.pj_per_bit} pJ/bit)")
    ax.set(xlabel="link energy (pJ/bit)", ylabel=f"energy ({unit})",
           title=f"{report.workload.name}: energy vs link pJ/bit ({report.fabric.bandwidth_gbps:g} Gb/s ports)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "energy_vs_pj_per_bit.png", plt))

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for system, (xs, ys) in _series(report.sweep_bandwidth, "bandwidth_gbps", "eta").items():
        ax.semilogx(xs, ys, marker="o", markersize=3, label=system, **_style(system))
    ax.set(xlabel="port bandwidth (Gb/s)", ylabel="η = useful / total energy", ylim=(0, 1.05),
           title=f"{report.workload.name}: η vs bandwidth ({report.fabric.pj_per_bit} pJ/bit)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "eta_vs_bandwidth.png", plt))

    brain = report.brain if report.brain is not None else brain_projection(table, report.fabric, brain_workload(table.brain))
    paths.append(_brain_plot(brain, out / "brain_power_generations.png", plt))
    return paths


def _brain_plot(brain: BrainProjection, path: Path, plt) -> Path:
    names = [row["generation"] for row in brain.rows]
    power = [row["power_w"] for row in brain.rows]
    low = [row["power_w_at_rate_low"] for row in brain.rows]
    high = [row["power_w_at_rate_high"] for row in brain.rows]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    x = range(len(names))
    ax.bar(x, power, color="tab:blue", label=f"π² at {brain.assumptions['rate_hz']:g} Hz")
    ax.errorbar(x, power, yerr=[[p - lo for p, lo in zip(power, low)], [hi - p for p, hi in zip(power, high)]],
                fmt="none", ecolor="black", capsize=4,
                label="rate {:g}–{:g} Hz".format(*brain.assumptions["rate_range_hz"]))
    ax.axhspan(*HUNDREDS_OF_WATTS, color="tab:green", alpha=0.15, label="'hundreds of watts'")
    ax.axhline(brain.brain_power_w, color="tab:red", linestyle="--", label=f"brain ≈{brain.brain_power_w:g} W")
    ax.set_yscale("log")
    ax.set_xticks(list(x), names, rotation=20, ha="right")
    ax.set(ylabel="power (W)", title="Brain-scale π²: {:.3g} neurons × {:.3g} synapses".format(
        brain.assumptions["neurons"], brain.assumptions["synapses_per_neuron"]))
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    write_figure(fig, path, 120)
    plt.close(fig)
    return path

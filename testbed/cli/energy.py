"""`pi2 energy`: energy per inference, power and η of π² against other neuromorphic platforms."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from testbed.cli.output import emit_json, json_option
from testbed.energy.report import BrainProjection, EnergyReport, energy_for
from testbed.errors import ModelError


def _ks(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 1,30, got {text!r}") from None


def _measured(path: Path | None) -> dict[int, float] | None:
    if path is None:
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {int(k): float(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(f"measured events {path}: expected a JSON object {{layer index: events per inference}} ({exc})") from exc


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


@click.command()
@click.argument("net", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--workload", "workload_spec", metavar="brain|mlp:N0-N1-…",
              help="A workload instead of NET: 'brain' (brain-scale projection) or a dense MLP like mlp:784-500-10.")
@click.option("--k", "k_text", metavar="K1,K2,…", help="K per layer for an mlp: workload, e.g. 1,30.")
@click.option("--generation", default="chiplet-aer", show_default=True,
              help="π² fabric generation from platforms.yaml (ethernet-pluggable, ethernet-serdes, cpo-aer, "
                   "chiplet-aer, chiplet-future).")
@click.option("--link", help="Swap the generation's link technology (serdes, cpo, pluggable, ucie, ucie-future).")
@click.option("--pj-per-bit", type=float, help="Override the link energy, pJ/bit.")
@click.option("--bandwidth-gbps", type=float, help="Override one port's line rate, Gb/s.")
@click.option("--switch-pj", "switch_pj_per_packet", type=float, help="Override switch energy per packet copy, pJ.")
@click.option("--static-w", "static_w_per_port", type=float, help="Override fixed power per port, W.")
@click.option("--packet", type=click.Choice(["frame", "aer"]),
              help="Spike packet: the testbed's 62 B frame or a minimal address-event packet.")
@click.option("--rate", "rate_hz", type=float, default=1000.0, show_default=True,
              help="Inferences per second for the power column (the brain workload is per second).")
@click.option("--neurons", type=float, help="Brain workload: neurons [8.6e10].")
@click.option("--synapses", "synapses_per_neuron", type=float, help="Brain workload: synapses per neuron [1e4].")
@click.option("--spike-rate", "spike_rate_hz", type=float, help="Brain workload: mean firing rate, Hz [1].")
@click.option("--differential", is_flag=True, help="Brain workload: π²'s t⁺/t⁻ encoding (×2 events, ×2 ports).")
@click.option("--measured", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON {layer index: events per inference} measured by the simulator or a kernel run.")
@click.option("--platforms", "platforms_path", type=click.Path(exists=True, dir_okay=False),
              help="Use this platform table instead of the packaged platforms.yaml.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write energy_vs_pj_per_bit.png, eta_vs_bandwidth.png, brain_power_generations.png here.")
@json_option
def energy(net: str | None, workload_spec: str | None, k_text: str | None, generation: str, link: str | None,
           pj_per_bit: float | None, bandwidth_gbps: float | None, switch_pj_per_packet: float | None,
           static_w_per_port: float | None, packet: str | None, rate_hz: float, neurons: float | None,
           synapses_per_neuron: float | None, spike_rate_hz: float | None, differential: bool,
           measured: Path | None, platforms_path: str | None, plots_dir: Path | None, as_json: bool) -> None:
    """Energy per inference, power and η of π² vs conventional neuromorphic chips.

    Counts events per layer from NET's topology (or --workload), turns them into bits × links on a
    multicast fabric, and prices them with figures from platforms.yaml (each with its source).
    Energies are in joules per inference (per second of activity for the brain), power in watts,
    η = useful computation energy / total energy.

    \b
    Examples:
      pi2 energy net.npz --rate 1000
      pi2 energy --workload mlp:784-500-10 --k 1,30 --generation ethernet-serdes
      pi2 energy --workload brain --spike-rate 4 --plots out/
    """
    brain = {key: value for key, value in (("neurons", neurons), ("synapses_per_neuron", synapses_per_neuron),
                                           ("rate_hz", spike_rate_hz)) if value is not None}
    if differential:
        brain["differential"] = True
    overrides = {"pj_per_bit": pj_per_bit, "bandwidth_gbps": bandwidth_gbps, "packet": packet,
                 "switch_pj_per_packet": switch_pj_per_packet, "static_w_per_port": static_w_per_port}
    report, table = energy_for(net, workload_spec, _ks(k_text), generation, rate_hz, link, overrides, brain,
                               _measured(measured), platforms_path)
    plots = []
    if plots_dir is not None:
        from testbed.energy.plots import write_plots  # matplotlib only when plots are asked for

        plots = write_plots(report, table, plots_dir)
    if as_json:
        emit_json({**report.to_dict(), "plots": [str(p) for p in plots]})
        return
    _render(report, plots)


def _render(report: EnergyReport, plots: list[Path]) -> None:
    console = Console()
    wl, fab = report.workload, report.fabric
    data = report.to_dict()["workload"]
    per = "per second" if wl.per == "second" else "per inference"
    layers = Table(title=f"{wl.name}: traffic {per} — {data['bits_per_event']} bits/event "
                         f"({fab.packet}; minimal AER {data['aer_bits']} bits), radix-{fab.switch_radix} multicast")
    for column in ("layer", "events", "ports/ev", "arrivals", "kept", "links/ev", "hops"):
        layers.add_column(column, justify="left" if column == "layer" else "right")
    for row in report.layer_rows():
        layers.add_row(row["layer"], f"{row['events']:.4g}", str(row["fanout_ports"]), f"{row['arrivals']:.4g}",
                       f"{row['kept_fraction']:.1%}", str(row["links_per_event"]),
                       str(row["hops_per_arrival"]))
    console.print(layers)

    rate = "" if wl.per == "second" else f" @{report.rate_hz:g}/s"
    systems = Table(title=f"Same workload on every platform — interconnect {fab.name}: {fab.pj_per_bit:g} pJ/bit, "
                          f"{fab.bandwidth_gbps:g} Gb/s, {fab.switch_pj_per_packet:g} pJ/copy, "
                          f"{fab.static_w_per_port:g} W/port")
    for column in ("system", "energy", f"power{rate}", "η", "% cmp/link/sw/stat"):
        systems.add_column(column, justify="left" if column == "system" else "right")
    for s in [*report.systems, *(g for g in report.generations if g.system != report.systems[0].system)]:
        split = "/".join(f"{100 * v / s.total_j:.0f}" if s.total_j else "–"
                           for v in (s.compute_j, s.link_j, s.switch_j, s.static_j))
        systems.add_row(s.system, _si(s.total_j, "J"), _si(s.total_j * report.rate_hz, "W"), f"{s.eta:.3f}", split)
    console.print(systems)
    console.print("η of conventional chips is an upper bound: their published pJ/SOP includes on-chip routing.",
                  style="dim")

    sweep = Table(title=f"π² sweeps ({per}): link pJ/bit, then port bandwidth (other figures fixed)")
    for column in ("pJ/bit", "π² energy", "π² η", "Gb/s", "π² η"):
        sweep.add_column(column, justify="right")
    pi2 = report.systems[0].system
    pj_rows = report.sweep_pj_per_bit[::3]
    for a, b in zip(pj_rows, report.sweep_bandwidth[::2]):
        sweep.add_row(f"{a['pj_per_bit']:.3g}", _si(a["systems"][pi2]["energy_j"], "J"), f"{a['systems'][pi2]['eta']:.3f}",
                      f"{b['bandwidth_gbps']:g}", f"{b['systems'][pi2]['eta']:.3f}")
    console.print(sweep)
    if report.brain is not None:
        _render_brain(console, report.brain)
    for path in plots:
        console.print(f"wrote {path}")


def _render_brain(console: Console, brain: BrainProjection) -> None:
    a = brain.assumptions
    table = Table(title="Brain-scale projection: {:.3g} neurons × {:.3g} synapses/neuron at {:g} Hz "
                        "({:.3g} synaptic events/s{})".format(a["neurons"], a["synapses_per_neuron"], a["rate_hz"],
                                                             a["synaptic_events_per_s"],
                                                             ", differential" if a["differential"] else ""))
    for column in ("generation", "link", "packet", "power", "rate {:g}–{:g} Hz".format(*a["rate_range_hz"]), "η",
                   "vs hundreds of W"):
        table.add_column(column, justify="left" if column in ("generation", "link", "packet") else "right")
    for row in brain.rows:
        table.add_row(row["generation"], row["link"], row["packet"], _si(row["power_w"], "W"),
                      f"{_si(row['power_w_at_rate_low'], 'W')} – {_si(row['power_w_at_rate_high'], 'W')}",
                      f"{row['eta']:.3f}", row["vs_hundreds_of_watts"])
    console.print(table)
    console.print(f"The brain: ≈{brain.brain_power_w:g} W. With π²'s differential encoding (×4 arrivals) the chosen "
                  f"fabric needs {_si(brain.differential_w, 'W')}.")

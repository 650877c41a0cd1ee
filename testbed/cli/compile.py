"""`pi2 compile` and `pi2 simulate`: a network into a FabricPlan, and the plan run in software."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from rich.console import Console

from testbed.atomic_file import check_output_file
from testbed.cli.output import emit_json, json_option, per_layer_table
from testbed.cli.params import compile_options
from testbed.infer.inputs import network_inputs
from testbed.infer.pipeline import compile_for, network_of
from testbed.plan.fabric_plan import FabricPlan, load_plan
from testbed.sim.executor import simulate
from testbed.sim.fabric_cpu import kth_lateness_p99, simulate_busy

NET = click.Path(exists=True, dir_okay=False, path_type=Path)


def show_plan(plan: FabricPlan) -> None:
    """The summary as text that fits an 80-column terminal (the numbers are what matter, not the box)."""
    info = plan.summary()
    packets = info["packets_per_sample"]
    loss = max(row["loss"] for row in info["layers"])
    console = Console()
    console.print(f"[bold]plan[/]: profile {info['profile']} (delay {info['delay']}, {info['delay_lines']} delay "
                  f"lines, gate {info['gate']}), "
                  f"τ = {info['tau_us']:g} µs, one sample every {info['period_us'] / 1e3:.1f} ms "
                  f"(≤ {info['samples_per_s_bound']:.1f} samples/s"
                  + (f"; {info['banks']} banks, {info['layer_slots']} samples per layer in flight)"
                     if info['banks'] > 1 else ")"))
    console.print(f"objects: {info['namespaces']} namespaces, {info['bridges']} bridges, {info['veth_pairs']} veth pairs")
    console.print(f"packets per sample: {packets['injected']} injected, {packets['port_copies']} port copies, "
                  f"{packets['pruned']} pruned, {packets['shaped']} shaped; "
                  + (f"spike loss {100 * loss:g} % per port" if loss else "no spike loss"))
    rows = {"inputs": "inputs", "neurons": "neurons", "k": "K", "ports": "neuron ports", "classes": "delay classes",
            "lines": "shared delay lines", "pruned": "synapses left out", "filters": "classifier filters",
            "gates": "first-K gates"}
    table = per_layer_table(len(info["layers"]))
    for key, label in rows.items():
        table.add_row(label, *(str(row[key]) for row in info["layers"]))
    table.add_row("grid, pool, s", *(f"{'×'.join(map(str, row['shape']))}"
                                     + (f" /{row['pool']}" if row["pool"] > 1 else "") + f", {row['s']:g}"
                                     for row in info["layers"]))
    table.add_row("lead (ms)", *(f"{row['origin_us'] / 1e3:.2f}" for row in info["layers"]))
    table.add_row("window (ms)", *(f"{row['window_us'] / 1e3:.2f}" for row in info["layers"]))
    table.add_row("M_K (model units)", *(f"{row['offset_mk']:.3f}" for row in info["layers"]))
    console.print(table)
    if any(len(row["shape"]) == 3 for row in info["layers"]):
        console.print("(a conv layer leaves out every input outside a neuron's receptive field, besides what pruning does)")


@click.command("compile")
@click.argument("net_path", metavar="NET", type=NET)
@compile_options
@click.option("--dataset", default=None, help="Calibration data set (default: the one the network was trained on).")
@click.option("--calibration", type=click.IntRange(1), default=500, show_default=True,
              help="Training samples that fix each layer's window.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the plan JSON here.")
@click.option("--show", is_flag=True, help="Print a readable summary of the plan.")
@json_option
def compile_cmd(net_path: Path, profile: str, tau_us: float, relay_us: float, prune_margin: float | None, lead: float,
                loss: float, delay_lines: str, banks: int, dataset: str | None, calibration: int, output: Path | None, show: bool,
                as_json: bool) -> None:
    """Compile the π² network NET into a FabricPlan (plan.json).

    Every neuron becomes two gated ports; its synapses' delays become shared delay lines (one
    htb class per event and distinct delay, counted by the member ports' neurons) or, with --delay-lines
    per-synapse, a delay class per synapse on its port behind the layer's switch. The plan is what both `pi2 simulate` and `pi2 up`/`pi2 infer` execute.

    \b
    Example:
      pi2 compile testbed/networks/digits-mlp.npz --profile shaper -o plan.json --show
    """
    if output is not None:  # before compiling, not after (a minute of calibration lost)
        check_output_file(output, "-o/--output")
    plan = compile_for(net_path, profile, tau_us, relay_us, dataset, calibration, prune_margin, loss, lead, delay_lines,
                       banks)
    if output is not None:
        plan.save(output)
    if as_json:
        emit_json({"plan": None if output is None else str(output), **plan.summary()})
    elif show or output is None:
        show_plan(plan)
    if output is not None and not as_json:
        click.echo(f"wrote {output}")


@click.command()
@click.argument("plan_path", metavar="PLAN", type=NET)
@click.option("--dataset", default=None, help="Data set (default: the one the plan's network was trained on).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Simulate only the first N test samples.")
@click.option("--packet-cost-us", type=click.FloatRange(min=0), default=None,
              help="Also predict a kernel whose fabric CPU spends this many µs on every packet (a queue; "
                   "bench/infer.py's kernel CPU per shaped packet is a measure of it).")
@json_option
def simulate_cmd(plan_path: Path, dataset: str | None, limit: int | None, packet_cost_us: float | None,
                 as_json: bool) -> None:
    """Run PLAN in the software simulator: accuracy and agreement with the golden model.

    The simulator applies the plan's realised delays (its synapses' classes or its shared delay
    lines), flood order, first-K gates and deadlines in closed form: no queueing and no CPU cost,
    so it is what an idle kernel would compute. The golden model is the network itself (pi2 eval);
    their gap is the cost of the realisation.

    With --packet-cost-us C it also replays the samples through the plan's slots on one fabric CPU
    that serves every packet (copies, releases) first come, first served in C µs, adds each
    arrival's wait to it, and reports what that kernel would decide: its accuracy, its agreement
    with the closed form (what `pi2 infer` would measure) and the waits per layer. Before building
    anything, it says whether a τ leaves the fabric CPU enough room.

    \b
    Example:
      pi2 compile testbed/networks/digits-mlp.npz --tau 3ms -o plan.json
      pi2 simulate plan.json --packet-cost-us 3
    """
    plan = load_plan(plan_path)
    net = network_of(plan, plan_path).with_bits(plan.network["bits"])
    inputs = network_inputs(net, dataset, "test", limit)
    sim = simulate(plan, inputs.x)
    golden = net.predict(inputs.x)
    report = {"samples": len(inputs.y), "dataset": inputs.dataset,
              "sim_accuracy": float(np.mean(sim.predictions == inputs.y)),
              "golden_accuracy": float(np.mean(golden == inputs.y)),
              "sim_golden_agreement": float(np.mean(sim.predictions == golden)),
              "timed_out_spikes": int(sum(layer.timed_out.sum() for layer in sim.layers))}
    if packet_cost_us is not None:
        busy = simulate_busy(plan, inputs.x, sim, packet_cost_us)
        report.update({"packet_cost_us": packet_cost_us,
                       "predicted_accuracy": float(np.mean(busy.predictions == inputs.y)),
                       "predicted_agreement": float(np.mean(busy.predictions == sim.predictions)),
                       "predicted_timed_out_spikes": int(sum(layer.timed_out.sum() for layer in busy.layers)),
                       "predicted_kth_late_us_p99": kth_lateness_p99(busy.layers, sim.layers)})
    if as_json:
        emit_json(report)
    else:
        for key, value in report.items():
            click.echo(f"{key:>32}: {value:.4f}" if isinstance(value, float) else f"{key:>32}: {value}")


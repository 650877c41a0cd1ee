"""`pi2 infer`: classify samples on a live kernel fabric and compare with the simulator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from testbed.cli.cluster import cluster_options, cluster_request
from testbed.cli.output import emit_json, json_option, per_layer_table
from testbed.cluster.hosts import ClusterSpec
from testbed.atomic_file import check_writable_dir
from testbed.cli.params import compile_options, inject_cpu_option, refuse_compile_options
from testbed.infer.pipeline import BUNDLED_NETWORK, InferOptions, infer
from testbed.infer.report import InferenceReport


@click.command("infer")
@click.argument("source", metavar="NET|PLAN", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", default=None, help="Data set (default: the one the network was trained on).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Classify only the first N test samples (default: all).")
@click.option("--backend", type=click.Choice(["netns", "mininet"]), default="netns", show_default=True,
              help="netns: plain namespaces and bridges; mininet: the same plan through Mininet's API "
                   "(--cluster implies it).")
@cluster_options
@compile_options(auto_tau=True)
@click.option("--inject-cpu", type=int, default=0, show_default=True, callback=inject_cpu_option,
              help="CPU the injector busy-waits on (kernel packet work is steered to the others); -1: don't pin.")
@click.option("--pcap", "pcap_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write injected.pcap and received.pcap (ns timestamps) here; read them with tcpdump -r or pi2 trace.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write a spike raster of sample 0 and the arrival-error histogram (PNG) here.")
@json_option
def infer_cmd(source: Path | None, dataset: str | None, limit: int | None, backend: str, cluster: ClusterSpec | None,
              placement: Path | None, split_ports: int | None, profile: str,
              tau_us: float | None, relay_us: float, prune_margin: float | None, lead: float, loss: float,
              delay_lines: str, banks: int, inject_cpu: int,
              pcap_dir: Path | None, plots_dir: Path | None, as_json: bool) -> None:
    """Classify test samples with the Linux kernel doing the neural computation.

    NET (a network .npz, default: the bundled digits network) is compiled for this kernel, or
    PLAN (from `pi2 compile`) is used as is. The fabric is built from namespaces, veths, bridges
    and qdiscs, samples stream through it several at a time, and everything is torn down at the
    end, on errors and on Ctrl-C. Reports kernel, plan-simulation and golden-model accuracy, their
    per-sample agreement, arrival-time errors per layer, throughput and why spikes were dropped,
    and warns when spikes went missing or arrived far off the plan (τ too small for this machine).
    With --tau auto (the default for a network) the run starts by measuring this machine: a few
    candidate τ, each a short run of training samples, and takes the smallest that keeps the decisions.

    \b
    Examples:
      sudo pi2 infer --limit 50
      sudo pi2 infer net.npz --dataset digits --tau 2ms --pcap out/ --plots out/
      sudo pi2 infer plan.json --backend mininet --json
      sudo pi2 infer --profile shaper --loss 0.1 --limit 100
      sudo pi2 infer --tau 40ms --cluster emulated:3 --split-ports 20
    """
    if source is not None and source.suffix == ".json":
        refuse_compile_options(click.get_current_context(), source)
    for directory, option in ((pcap_dir, "--pcap"), (plots_dir, "--plots")):
        if directory is not None:  # before the run, not after it (the report would be lost)
            check_writable_dir(directory, option)
    options = InferOptions(dataset=dataset, limit=limit, backend=backend, profile=profile, tau_us=tau_us,
                           relay_us=relay_us, prune_margin=prune_margin, lead=lead, loss=loss, delay_lines=delay_lines,
                           banks=banks,
                           inject_cpu=None if inject_cpu < 0 else inject_cpu,
                           pcap_dir=pcap_dir, plots_dir=plots_dir,
                           cluster=cluster_request(cluster, placement, split_ports))
    if cluster is not None:  # Mininet builds the parts; a layer split over hosts needs a class per synapse
        given = click.get_current_context().get_parameter_source("delay_lines") == click.core.ParameterSource.COMMANDLINE
        split = split_ports is not None and not given
        options = replace(options, backend="mininet", delay_lines="per-synapse" if split else delay_lines)
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=as_json) as bar:
        task = bar.add_task("measuring τ" if tau_us is None and (source is None or source.suffix != ".json")
                            else "building fabric", total=None)

        def tried(trial):  # type: ignore[no-untyped-def]
            console.print(f"τ {trial.tau_us / 1e3:g} ms: {trial.verdict} (|y| error p99 "
                          f"{', '.join(f'{m:.0f}' for m in trial.y_error_us_p99)} µs, latest K-th spike "
                          f"{', '.join(f'{m:.0f}' for m in trial.kth_late_us_max)} µs late, predicted agreement "
                          f"{trial.predicted_agreement:.2%})", style="dim", highlight=False)

        def started(plan, samples):  # type: ignore[no-untyped-def]
            bar.update(task, description=f"inference ({plan.profile}, τ {plan.timing.tau_us:g} µs)", total=samples)

        report, _, files = infer(source or BUNDLED_NETWORK, options, lambda n: bar.advance(task, n), started,
                                 None if as_json else tried)
    if as_json:
        emit_json({**report.to_dict(), "files": [str(f) for f in files]})
        return
    render(report)
    for path in files:
        click.echo(f"wrote {path}")


def render(report: InferenceReport) -> None:
    console = Console()
    console.print(f"[bold]{report.samples}[/] {report.dataset} samples on the [bold]{report.backend}[/] fabric, "
                  f"profile {report.profile}, τ = {report.tau_us:g} µs"
                  + (f", spike loss {100 * report.loss:g} %" if report.loss else ""))
    if report.tau_choice is not None:
        console.print(f"τ auto: {report.tau_choice['tau_us'] / 1e3:g} ms, {report.tau_choice['reason']}",
                      highlight=False)
    if report.loss:
        console.print("[dim]The kernel and the simulation lose different spikes (independent draws): compare "
                      "accuracies; per-sample agreement and arrival errors include the difference.[/]")
    table = Table(title_justify="left")
    for column in ("", "kernel", "plan simulation", "golden model"):
        table.add_column(column, justify="right")
    table.add_row("accuracy", f"{report.kernel_accuracy:.2%}", f"{report.sim_accuracy:.2%}", f"{report.golden_accuracy:.2%}")
    table.add_row("agrees with kernel", "", f"{report.kernel_sim_agreement:.2%}", f"{report.kernel_golden_agreement:.2%}")
    console.print(table)
    packets = report.packets_per_sample
    console.print(f"throughput: {report.samples_per_s:.1f} samples/s, {report.synaptic_events_per_s:,.0f} synaptic "
                  f"events/s; per sample {packets['injected']} frames injected, {packets['port_copies']} port copies, "
                  f"{packets['pruned']} pruned, {packets['shaped']} shaped")
    layers = per_layer_table(len(report.layers), "kernel − simulated T of the in-kernel neurons' events (µs)")
    rows = (("spikes counted", lambda r: f"{r.spikes_received}/{r.spikes_expected}"),
            ("ports short of K", lambda r: str(r.ports_short)),
            ("error mean", lambda r: f"{r.error_us_mean:.0f}"), ("error median", lambda r: f"{r.error_us_median:.0f}"),
            ("error sd", lambda r: f"{r.error_us_sd:.0f}"), ("|error| p99", lambda r: f"{r.error_us_p99:.0f}"),
            ("K-th spike late p99", lambda r: f"{r.kth_late_us_p99:.0f}"),
            ("K-th spike late max", lambda r: f"{r.kth_late_us_max:.0f}"),
            ("injection late p99", lambda r: f"{r.inject_late_us_p99:.0f}"))
    for label, cell in rows:
        layers.add_row(label, *(cell(row) for row in report.layers))
    console.print(layers)
    gates = per_layer_table(len(report.gates), "where the neurons (gates) sent spikes and primers")
    for key in report.gates[0]:
        gates.add_row(key.replace("_", " "), *(str(layer[key]) for layer in report.gates))
    console.print(gates)
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    if report.receiver_drops or report.injector_refused:
        console.print(f"[yellow]receiver drops {report.receiver_drops}, injected frames refused by the kernel "
                      f"{report.injector_refused}[/]")
    if report.late_slots:  # the schedule fell behind now and then: a figure, not a fault
        console.print(f"[dim]injection slots started late: {report.late_slots}[/]")

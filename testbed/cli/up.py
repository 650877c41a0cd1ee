"""`pi2 up PLAN`: build a compiled plan in the kernel and leave it running (`pi2 down RUN` removes it)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from testbed.cli.cluster import cluster_options, cluster_request
from testbed.cli.output import emit_json, json_option
from testbed.cluster.hosts import ClusterSpec
from testbed.fabric.live import BACKENDS, bring_up, hold_up
from testbed.kernel.names import RunRegistry
from testbed.plan.fabric_plan import load_plan


def _cpus(ctx: click.Context, param: click.Parameter, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected CPU numbers separated by commas, e.g. 1 or 1,2") from None


def _held(as_json: bool):  # type: ignore[no-untyped-def]
    def ready(fabric) -> None:  # type: ignore[no-untyped-def]
        layout = fabric.cluster.to_dict()
        if as_json:
            emit_json({"run_id": fabric.run_id, "backend": fabric.backend, "cluster": layout})
        else:
            for part in layout["part_offsets_us"]:
                click.echo(f"layer {part['layer']} neurons {part['neurons'][0]}..{part['neurons'][1] - 1} on "
                           f"{part['host']}: +{part['latency_us']:.0f} µs")
            click.echo(f"run {fabric.run_id} up over {len(layout['placement']['hosts'])} hosts; Ctrl-C or "
                       f"`sudo pi2 down {fabric.run_id}` removes it")

    return ready


@click.command("up")
@click.argument("plan_file", metavar="PLAN", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), default="netns", show_default=True,
              help="netns: two namespaces built with batched netlink; mininet: Mininet's API wires "
                   "testbed.fabric.pi2_layers (Linux bridges), the testbed adds delays and gates.")
@click.option("--fabric-cpus", metavar="CPUS", default=None, callback=_cpus,
              help="Run the fabric's packet work (flooding, classification, htb) on these CPUs, e.g. 1, "
                   "by RPS on the injector links; keep the injector's CPU out. Default: leave as is.")
@cluster_options
@json_option
def up_cmd(plan_file: Path, backend: str, fabric_cpus: list[int] | None, cluster: ClusterSpec | None,
           placement: Path | None, split_ports: int | None, as_json: bool) -> None:
    """Build PLAN (from `pi2 compile`) in the kernel and leave it up: namespaces, bridges, veths,
    one htb class per synapse and an eBPF neuron (first-K gate) per neuron port. Prints the run id;
    the gates stay attached after pi2 exits. Remove it with `sudo pi2 down RUN`. A neuron counts
    only spikes that carry their sample's origin (time_ns, CLOCK_REALTIME) and get a kernel RX
    stamp (some socket in the host namespace has SO_TIMESTAMPNS on); it passes one event per port
    and sample.

    \b
    Example:
      pi2 compile net.npz --profile shaper -o plan.json
      sudo pi2 up plan.json --fabric-cpus 1
      sudo pi2 down k3x9

    With --cluster the fabric is spread over hosts and stays up only while this command runs
    (Mininet's cluster edition keeps its remote nodes on this process's ssh sessions): it prints
    the run id and waits; Ctrl-C, or `sudo pi2 down RUN` from another shell, removes it from every
    host.
    """
    plan = load_plan(plan_file)
    request = cluster_request(cluster, placement, split_ports)
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  console=console, transient=True, disable=as_json) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        if request is not None:
            hold_up(plan, request, _held(as_json), progress=progress, fabric_cpus=fabric_cpus)
        run_id = bring_up(plan, backend, progress=progress, fabric_cpus=fabric_cpus)
    entries = RunRegistry.load(run_id).entries
    if as_json:
        emit_json({"run_id": run_id, "backend": backend, "objects": entries})
        return
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["kind"]] = counts.get(entry["kind"], 0) + 1
    summary = plan.summary()
    click.echo(f"run {run_id} up ({backend}): " + ", ".join(f"{n} {k}" for k, n in counts.items())
               + f"; {sum(layer['classes'] for layer in summary['layers'])} delay classes, "
               f"{sum(layer['gates'] for layer in summary['layers'])} gates")
    click.echo(f"remove with: sudo pi2 down {run_id}")

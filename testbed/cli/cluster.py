"""`--cluster`, `--placement`, `--split-ports` (pi2 infer, pi2 up) and `pi2 place`, which prints a
placement to edit and pass back with --placement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from testbed.cluster.hosts import ClusterSpec, parse_cluster
from testbed.errors import TestbedError


def parse_cluster_option(ctx: click.Context, param: click.Parameter, value: str | None) -> ClusterSpec | None:
    if value is None:
        return None
    try:
        return parse_cluster(value)
    except TestbedError as exc:
        raise click.BadParameter(str(exc)) from None


def cluster_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--cluster HOSTS, --placement FILE and --split-ports N (passed as cluster, placement, split_ports)."""
    command = click.option("--split-ports", "split_ports", type=click.IntRange(2), default=None,
                           help="With --cluster: split a layer with more neuron ports than this into neuron groups "
                                "on different hosts.")(command)
    command = click.option("--placement", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                           help="With --cluster: which host builds which layer part (JSON, as `pi2 place` prints).")(command)
    return click.option("--cluster", callback=parse_cluster_option, metavar="HOSTS", default=None,
                        help="Spread the fabric over hosts with Mininet's cluster edition: localhost,HOST[,HOST…] "
                             "(ssh as root to each) or emulated:N (N hosts on this machine).")(command)


def cluster_request(cluster: ClusterSpec | None, placement: Path | None, split_ports: int | None) -> Any:
    """build_fabric's `cluster` argument (None without --cluster)."""
    if cluster is None:
        if placement is not None or split_ports is not None:
            raise click.UsageError("--placement and --split-ports need --cluster")
        return None
    from testbed.fabric.live import ClusterRequest

    return ClusterRequest(cluster, placement, split_ports)


@click.command("place")
@click.argument("plan_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cluster", callback=parse_cluster_option, metavar="HOSTS", required=True,
              help="localhost,HOST[,HOST…] or emulated:N, as for pi2 infer.")
@click.option("--split-ports", "split_ports", type=click.IntRange(2), default=None,
              help="Split a layer with more neuron ports than this into neuron groups.")
@click.option("--check", "check_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Check this placement file against the plan and hosts instead of making one.")
def place_cmd(plan_file: Path, cluster: ClusterSpec, split_ports: int | None, check_file: Path | None) -> None:
    """Print where PLAN_FILE's layers (and neuron groups) would be built on the --cluster hosts.

    The JSON goes to stdout (edit it and pass it to `pi2 infer --cluster … --placement FILE`);
    one line per part goes to stderr.

    \b
    Examples:
      pi2 place plan.json --cluster emulated:3 --split-ports 32 > placement.json
      pi2 place plan.json --cluster localhost,server1 --check placement.json
    """
    from testbed.plan.fabric_plan import load_plan
    from testbed.plan.placement import load_placement, place

    plan = load_plan(plan_file)
    placement = (place(plan, cluster.names, split_ports) if check_file is None
                 else load_placement(check_file, plan, cluster.names))
    for line in placement.describe():
        click.echo(line, err=True)
    click.echo(json.dumps(placement.to_dict(), indent=1))

"""`pi2 doctor`: what this kernel can realise, and which tc profile `--profile auto` picks."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from testbed.cli.cluster import parse_cluster_option
from testbed.cli.output import emit_json, json_option
from testbed.cli.params import DURATION
from testbed.cluster.hosts import ClusterError, ClusterSpec
from testbed.errors import ProfileError
from testbed.kernel.probe import probe_capabilities
from testbed.plan.capabilities import FAMILIES
from testbed.plan.profiles import Diagnosis, diagnose

YES, NO = "[green]yes[/]", "[red]no[/]"


@click.command()
@click.option("--cluster", callback=parse_cluster_option, metavar="HOSTS", default=None,
              help="Also check each host of localhost,HOST[,HOST…] (or emulated:N, made for the check): ssh, sudo, "
                   "mnexec, the testbed, the profile, MTU, latency, jitter and clock offset.")
@click.option("--tau", "tau_us", type=DURATION, default=None,
              help="With --cluster: refuse if a path's jitter would corrupt this τ.")
@json_option
def doctor(cluster: ClusterSpec | None, tau_us: float | None, as_json: bool) -> None:
    """Probe this kernel's qdiscs, classifiers, actions, devices and tools, and pick a tc profile.

    The probe creates real objects in one throw-away namespace (p2<run id>probe, removed at the
    end; about 0.1 s), so it needs root. It prints what exists, which realisation of each π²
    primitive (delay, gate, timeout, loss, broadcast) can be built here, and the profile
    `--profile auto` will use. Exits with status 2 when no profile fits.

    \b
    Example:
      sudo pi2 doctor
      sudo pi2 doctor --json | jq .auto
      sudo pi2 doctor --cluster localhost,server1,server2 --tau 10ms
    """
    found = diagnose(probe_capabilities("pi2 doctor"))
    hosts = None if cluster is None else _check_cluster(cluster, found.selected)
    if as_json:
        emit_json(found.to_dict() if hosts is None else {**found.to_dict(), "cluster": [h.to_dict() for h in hosts]})
    else:
        _render(found)
        if hosts is not None:
            _render_hosts(hosts)
    if found.selected is None:
        raise ProfileError(found.problem)
    if hosts is not None:
        from testbed.cluster.check import refusals

        problems = refusals(hosts, tau_us)
        if problems:
            raise ClusterError("; ".join(problems))


def _check_cluster(cluster: ClusterSpec, selected) -> list:  # type: ignore[no-untyped-def]
    """Check the hosts of `cluster`; emulated ones are made for the check, in a run of their own."""
    from testbed.cluster.check import check_cluster
    from testbed.cluster.emulated import emulate_hosts
    from testbed.cluster.hosts import real_hosts
    from testbed.kernel import cleanup
    from testbed.kernel.names import RunRegistry

    profile = None if selected is None else selected.name
    if not cluster.emulated:
        return check_cluster(real_hosts(cluster), profile)
    cleanup.require_root("pi2 doctor --cluster emulated:N")
    registry = RunRegistry.create()
    try:
        return check_cluster(emulate_hosts(registry, len(cluster.names)), profile)
    finally:
        cleanup.down(registry.run_id)


def _render_hosts(hosts: list) -> None:  # type: ignore[no-untyped-def]
    table = Table(title="Cluster hosts", title_justify="left")
    for column in ("host", "address", "checks", "profile", "RTT µs", "jitter µs", "clock offset µs", "notes"):
        table.add_column(column)
    for h in hosts:
        checks = ", ".join(f"{name} {'ok' if ok else '[red]FAILED[/]'}" for name, ok in h.checks.items())
        offset = "" if h.clock_offset_us is None else f"{h.clock_offset_us:+.0f} ± {h.clock_uncertainty_us:.0f} ({h.clock_source})"
        table.add_row(h.host, h.address, checks, h.profile or "?", "" if h.rtt_us is None else f"{h.rtt_us:.0f}",
                      "" if h.jitter_us is None else f"{h.jitter_us:.0f}", offset,
                      "; ".join(f"{k}: {v}" for k, v in h.notes.items()))
    Console().print(table)


def _render(found: Diagnosis) -> None:
    console = Console()
    caps = Table(title=f"Capabilities of kernel {found.capabilities.kernel_release}", title_justify="left")
    for column in ("family", "name", "available", "how the probe knows"):
        caps.add_column(column)
    for family in FAMILIES:
        for item in found.capabilities.family(family):
            caps.add_row(family, item.name, YES if item.available else NO, item.detail)
    console.print(caps)

    prims = Table(title="π² primitives: realisations this kernel supports", title_justify="left")
    for column in ("primitive", "kind", "supported", "needs", "missing", "profiles"):
        prims.add_column(column)
    for row in found.support:
        prims.add_row(row.primitive, row.kind, YES if row.supported else NO, ", ".join(row.needs),
                      ", ".join(row.missing), ", ".join(row.profiles))
    console.print(prims)

    for profile in found.profiles:
        lacking = profile.missing(found.capabilities)
        state = "fits" if profile.complete and not lacking else f"lacks {', '.join(lacking) or 'a primitive'}"
        console.print(f"profile [bold]{profile.name}[/] (rank {profile.auto_rank}): {state}")
    if found.selected is not None:
        console.print(f"--profile auto picks [bold green]{found.selected.name}[/]: {found.selected.description}")

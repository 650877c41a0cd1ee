"""`pi2 doctor`: what this kernel can realise, and which tc profile `--profile auto` picks."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from testbed.cli.output import emit_json, json_option
from testbed.errors import ProfileError
from testbed.kernel.probe import probe_capabilities
from testbed.plan.capabilities import FAMILIES
from testbed.plan.profiles import Diagnosis, diagnose

YES, NO = "[green]yes[/]", "[red]no[/]"


@click.command()
@json_option
def doctor(as_json: bool) -> None:
    """Probe this kernel's qdiscs, classifiers, actions, devices and tools, and pick a tc profile.

    The probe creates real objects in one throw-away namespace (p2<run id>probe, removed at the
    end; about 0.1 s), so it needs root. It prints what exists, which realisation of each π²
    primitive (delay, gate, timeout, loss, broadcast) can be built here, and the profile
    `--profile auto` will use. Exits with status 2 when no profile fits.

    \b
    Example:
      sudo pi2 doctor
      sudo pi2 doctor --json | jq .auto
    """
    found = diagnose(probe_capabilities("pi2 doctor"))
    if as_json:
        emit_json(found.to_dict())
    else:
        _render(found)
    if found.selected is None:
        raise ProfileError(found.problem)


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

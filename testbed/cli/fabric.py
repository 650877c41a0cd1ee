"""`pi2 status`, `pi2 down RUN`, `pi2 clean`: list and remove the kernel objects runs made."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from testbed.cli.output import emit_json, json_option
from testbed.kernel.cleanup import clean, down, status


def _removed_line(removed: dict[str, list[Any]]) -> str:
    parts = [f"{len(v)} {k}" for k, v in removed.items()]
    return "removed " + ", ".join(parts)


@click.command("status")
@json_option
def status_cmd(as_json: bool) -> None:
    """List runs (from /run/pi2/RUN.json) and whether their namespaces, links, bridges and
    helper processes still exist; also p2* objects no run registered (left by a crash).

    \b
    Example:
      sudo pi2 status --json
    """
    report = status()
    if as_json:
        emit_json(report)
        return
    console = Console()
    if not report["runs"]:
        console.print("no registered runs")
    for run in report["runs"]:
        owner = "alive" if run["owner_alive"] else "gone"
        table = Table(title=f"run {run['run_id']} (owner pid {run['owner_pid']}, {owner})")
        for col in ("kind", "name", "namespace", "alive"):
            table.add_column(col)
        for obj in run["objects"]:
            name = obj.get("name") or str(obj.get("pid"))
            if obj.get("peer"):
                name += f" ↔ {obj['peer']} ({obj.get('peer_netns') or 'root'})"
            table.add_row(obj["kind"], name, (obj.get("netns") or "root") if obj["kind"] != "pid" else "",
                          "yes" if obj["alive"] else "no")
        console.print(table)
    if report["unregistered"]:
        console.print(f"unregistered p2 objects (remove with `sudo pi2 clean`): {', '.join(report['unregistered'])}")


@click.command("down")
@click.argument("run_id", metavar="RUN")
@json_option
def down_cmd(run_id: str, as_json: bool) -> None:
    """Remove exactly what run RUN (4 characters, see `pi2 status`) created, newest first:
    helper processes it recorded, then links, bridges and namespaces, then its registry.

    \b
    Example:
      sudo pi2 down k3x9
    """
    removed = down(run_id)
    if as_json:
        emit_json({"run_id": run_id, "removed": removed})
    else:
        click.echo(f"run {run_id}: {_removed_line(removed)}")


@click.command("clean")
@json_option
def clean_cmd(as_json: bool) -> None:
    """Remove every testbed object of every run: namespaces and links named p2 + a 4-character
    run id (root namespace and /run/netns), the helper pids registries recorded (never a process
    found by name), and the registries. Safe to repeat; stops other runs in progress too.

    \b
    Example:
      sudo pi2 clean
    """
    removed = clean()
    if as_json:
        emit_json({"removed": removed})
    else:
        click.echo(_removed_line(removed))

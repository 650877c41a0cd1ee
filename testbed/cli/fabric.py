"""`pi2 status`, `pi2 down RUN`, `pi2 clean`: list and remove the kernel objects runs made."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from testbed.cli.output import emit_json, json_option
from testbed.kernel.cleanup import Unrecorded, clean, down, status, sweep, unrecorded


def _removed_line(removed: dict[str, list[Any]]) -> str:
    stopped = "".join(f"stopped pid {pid} (its run was in use); " for pid in removed.get("stopped", []))
    parts = [f"{len(v)} {k}" for k, v in removed.items() if k not in ("stopped", "unreadable")]
    return stopped + "removed " + ", ".join(parts)


def _listing(objects: list[Unrecorded]) -> str:
    return "\n".join(f"  {obj}" for obj in objects)


@click.command("status")
@json_option
def status_cmd(as_json: bool) -> None:
    """List runs (from /run/pi2/RUN.jsonl), whether a process is using each, and whether their
    namespaces, links, bridges and helper processes still exist; also unreadable registries and
    p2* objects no registry records (someone else's, or a run's whose registry was lost).

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
        owner = "in use" if run["in_use"] else "alive" if run["owner_alive"] else "gone"
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
    for line in report["unreadable"]:
        console.print(f"unreadable registry: {line}", markup=False)
    if report["unregistered"]:
        names = ", ".join(obj["name"] for obj in report["unregistered"])
        console.print(f"p2 objects no registry records (left alone; `sudo pi2 clean --sweep` lists them and asks "
                      f"before removing them): {names}", markup=False)


@click.command("down")
@click.argument("run_id", metavar="RUN")
@json_option
def down_cmd(run_id: str, as_json: bool) -> None:
    """Remove exactly what run RUN (4 characters, see `pi2 status`) created, newest first:
    helper processes it recorded, then links, bridges and namespaces, then its registry. A run
    still in use (a `pi2 infer` in progress) is stopped first: its process gets SIGTERM and tears
    its fabric down itself.

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
@click.option("--sweep", "sweep_unrecorded", is_flag=True,
              help="Also remove p2* namespaces and links that no registry records, after listing them and asking.")
@click.option("--yes", is_flag=True, help="With --sweep: do not ask (the list is still printed).")
@json_option
def clean_cmd(sweep_unrecorded: bool, yes: bool, as_json: bool) -> None:
    """Remove every run that has a registry under /run/pi2: stop runs in use (SIGTERM to their
    process), then remove the namespaces, links, bridges and helper pids each recorded, and the
    registry. Unreadable registries are reported and removed. Objects no registry records are
    never touched unasked, even when named p2…: they are listed, and --sweep removes exactly
    that list once you confirm. Safe to repeat.

    \b
    Example:
      sudo pi2 clean
      sudo pi2 clean --sweep
    """
    removed = clean()
    left = unrecorded()
    swept: dict[str, list[Any]] = {"links": [], "namespaces": []}
    if sweep_unrecorded and left:
        click.echo(f"p2 objects no registry records ({len(left)}):\n{_listing(left)}", err=True)
        if yes or click.confirm("remove exactly these?", default=False, err=True):
            swept = sweep(left)
            left = unrecorded()
    if as_json:
        emit_json({"removed": removed, "swept": swept, "unrecorded": [str(obj) for obj in left]})
        return
    for line in removed["unreadable"]:
        click.echo(f"removed unreadable registry: {line}")
    click.echo(_removed_line(removed))
    if swept["links"] or swept["namespaces"]:
        click.echo(f"swept {len(swept['links'])} links, {len(swept['namespaces'])} namespaces")
    if left:
        click.echo(f"left alone {len(left)} p2 objects no registry records (`sudo pi2 clean --sweep` lists them "
                   f"and asks first):\n{_listing(left)}")

"""`pi2 guest`: run one command inside a user-mode-linux guest that has netem, cbs, police, gact, flower, OVS."""

from __future__ import annotations

import os
import re
import sys

import click

from testbed.cli.output import emit_json, json_option
from testbed.cli.params import FiniteRange
from testbed.kernel.guest import DEFAULT_MODULES, GuestSpec, run_in_guest

_MEM = re.compile(r"^(\d+)([MG]?)$", re.IGNORECASE)


def _mem_mb(ctx: click.Context, param: click.Parameter, value: str) -> int:
    match = _MEM.match(value.strip())
    if match is None:
        raise click.BadParameter(f"{value!r} is not a size; use MiB or a suffix, e.g. 512M or 1G")
    amount, unit = int(match.group(1)), match.group(2).upper()
    return amount * 1024 if unit == "G" else amount


def _env_pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in values:
        name, sep, value = item.partition("=")
        if sep == "":
            raise click.BadParameter(f"{item!r} has no '='; use NAME=VALUE, e.g. PI2_PROFILE=netem")
        pairs.append((name, value))
    return tuple(pairs)


@click.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
@click.option("--mem", "mem_mb", default="1G", show_default=True, callback=_mem_mb,
              help="Guest RAM: MiB, or with suffix M/G (512M, 2G).")
@click.option("--timeout", "timeout_s", type=FiniteRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Hard limit in seconds for boot + command + poweroff; the guest is then killed.")
@click.option("--env", "env", multiple=True, callback=_env_pairs, metavar="NAME=VALUE",
              help="Set a variable for the command (repeatable). Host PI2_* variables are passed on anyway.")
@click.option("--module", "modules", multiple=True, metavar="NAME",
              help=f"Also load this kernel module at boot (repeatable). Always loaded: {', '.join(DEFAULT_MODULES)}; "
                   "others load on demand.")
@json_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def guest(mem_mb: int, timeout_s: float, env: tuple[tuple[str, str], ...], modules: tuple[str, ...],
          as_json: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND as root in a user-mode-linux guest and exit with its status.

    The guest (Debian package user-mode-linux, kernel 6.1) boots in ~2-3 s with this machine's / mounted
    read-only, so the same python, virtualenv and checkout work inside; /tmp, /run and HOME are tmpfs.
    It has only loopback and the veths/namespaces the command makes. COMMAND runs in the current directory;
    its stdout and stderr are printed when it ends. The guest is always powered off and no process is left.

    \b
    Examples:
      pi2 guest -- tc qdisc add dev lo root netem delay 5ms
      PI2_PROFILE=netem pi2 guest --timeout 1800 -- python -m pytest tests/kernel -m root -q -p no:cacheprovider
    """
    result = run_in_guest(GuestSpec(command=command, cwd=os.getcwd(), env=env, mem_mb=mem_mb,
                                    timeout_s=timeout_s, modules=tuple(dict.fromkeys(DEFAULT_MODULES + modules))))
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(result.stdout, nl=False)
        click.echo(result.stderr, nl=False, err=True)
        click.echo(f"pi2 guest: exit status {result.exit_status} (UML {result.kernel_release}, command started "
                   f"{result.boot_s:.1f} s after boot, {result.wall_s:.1f} s in all)", err=True)
    sys.exit(result.exit_status)

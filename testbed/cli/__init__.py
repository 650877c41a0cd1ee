"""The `pi2` command: a thin click layer over the library.

Each command parses its words, calls one library function and renders the result (a table,
or JSON with ``--json``). Any `TestbedError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import click

from testbed import __version__
from testbed.errors import TestbedError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pi2")
def pi2() -> None:
    """π² testbed: run neural networks inside a Linux packet fabric.

    \b
    Typical flow:
      pi2 train --dataset digits --arch mlp:64-16-10 --k 1,1 -o net.npz
      pi2 compile net.npz --profile auto --tau 1ms -o plan.json
      sudo pi2 infer net.npz --dataset digits --limit 100
      pi2 energy net.npz
    """


def main() -> None:
    """Console entry point: run `pi2`, turning testbed errors into one line."""
    try:
        pi2.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("pi2: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except TestbedError as exc:
        click.echo(f"pi2: error: {exc}", err=True)
        sys.exit(2)

"""The `pi2` command: a thin click layer over the library.

Each command parses its words, calls one library function and renders the result (a table,
or JSON with ``--json``). Any `TestbedError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import signal
import sys
import threading

import click

from testbed import __version__
from testbed.errors import TestbedError, Terminated


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pi2")
def pi2() -> None:
    """π² testbed: run neural networks inside a Linux packet fabric.

    \b
    Typical flow:
      pi2 train --dataset digits --arch mlp:64-16-10 --k 24,8 --bits 4 -o net.npz
      sudo pi2 compile net.npz -o plan.json --show
      pi2 simulate plan.json
      sudo pi2 infer net.npz --limit 100     # τ measured for this machine (--tau auto)
      pi2 energy net.npz
    """


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


def main() -> None:
    """Console entry point: run `pi2`, turning testbed errors into one line. SIGTERM unwinds
    like Ctrl-C (whatever a command built is torn down), then exits 143, Ctrl-C 130."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        pi2.main(standalone_mode=False)
    except click.exceptions.Abort as exc:
        terminated = isinstance(exc.__cause__, Terminated)
        click.echo("pi2: terminated" if terminated else "pi2: aborted", err=True)
        sys.exit(128 + signal.SIGTERM if terminated else 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except TestbedError as exc:
        one_line = " ".join(str(exc).split("\n"))  # a library's message (YAML, HDF5) may span lines
        click.echo(f"pi2: error: {one_line}", err=True)
        sys.exit(2)


from testbed.cli.cluster import place_cmd  # noqa: E402
from testbed.cli.compile import compile_cmd, simulate_cmd  # noqa: E402
from testbed.cli.convert import export_cmd, import_cmd  # noqa: E402
from testbed.cli.doctor import doctor  # noqa: E402
from testbed.cli.energy import energy  # noqa: E402
from testbed.cli.eval import eval_command  # noqa: E402
from testbed.cli.fabric import clean_cmd, down_cmd, status_cmd  # noqa: E402
from testbed.cli.guest import guest  # noqa: E402
from testbed.cli.infer import infer_cmd  # noqa: E402
from testbed.cli.show import show  # noqa: E402
from testbed.cli.trace import trace  # noqa: E402
from testbed.cli.train import train  # noqa: E402
from testbed.cli.up import up_cmd  # noqa: E402

pi2.add_command(compile_cmd)
pi2.add_command(simulate_cmd, "simulate")
pi2.add_command(import_cmd)
pi2.add_command(export_cmd)
pi2.add_command(doctor)
pi2.add_command(energy)
pi2.add_command(guest)
pi2.add_command(infer_cmd)
pi2.add_command(trace)
pi2.add_command(up_cmd)
pi2.add_command(place_cmd)
pi2.add_command(status_cmd)
pi2.add_command(down_cmd)
pi2.add_command(clean_cmd)
pi2.add_command(train)
pi2.add_command(eval_command)
pi2.add_command(show)

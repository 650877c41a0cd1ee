"""The `pi2` entry point: one line per error, exit 143 on SIGTERM, a help that leads to a good run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from testbed.cli import pi2

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_exits_143_and_says_so(tmp_path) -> None:
    """A command blocked reading its input (here a FIFO nobody writes) ends as SIGTERM asks:
    unwound like Ctrl-C, status 128 + 15, not Ctrl-C's 130."""
    fifo = tmp_path / "spikes.pcap"
    os.mkfifo(fifo)
    child = subprocess.Popen([sys.executable, "-c", "from testbed.cli import main; main()", "trace", str(fifo)],
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # until it has opened the FIFO (it blocks there), ≤ 60 s
            if any(Path(f"/proc/{child.pid}/fd/{fd}").resolve() == fifo
                   for fd in os.listdir(f"/proc/{child.pid}/fd")):
                break
            time.sleep(0.1)
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 143
        assert child.stderr.read().strip().splitlines()[-1] == "pi2: terminated"  # type: ignore[union-attr]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_typical_flow_leads_to_a_good_run() -> None:
    """The top-level help once suggested --tau 1ms (5 % kernel accuracy here) and --k 1,1 (which
    `pi2 train --help` calls weak)."""
    text = CliRunner().invoke(pi2, ["--help"]).output
    assert "Typical flow" in text and "--tau 1ms" not in text and "--k 1,1" not in text
    assert "--tau 1ms" not in CliRunner().invoke(pi2, ["compile", "--help"]).output

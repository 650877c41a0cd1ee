"""`pi2 guest`: words in, one library call, the command's output and exit status out."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from testbed.cli import pi2


def test_a_malformed_memory_size_is_refused_before_booting() -> None:
    result = CliRunner().invoke(pi2, ["guest", "--mem", "1T", "--", "true"])
    assert result.exit_code == 2
    assert "'1T' is not a size" in result.output


def test_a_malformed_env_assignment_is_refused_before_booting() -> None:
    result = CliRunner().invoke(pi2, ["guest", "--env", "PI2_PROFILE", "--", "true"])
    assert result.exit_code == 2
    assert "use NAME=VALUE" in result.output


@pytest.mark.root
@pytest.mark.skipif(shutil.which("linux.uml") is None, reason="needs Debian package user-mode-linux")
@pytest.mark.skipif(os.environ.get("PI2_IN_GUEST") == "1", reason="inside a guest: no nested UML")
def test_json_carries_output_and_the_exit_status_becomes_pi2_s() -> None:
    result = CliRunner().invoke(pi2, ["guest", "--json", "--mem", "512M", "--env", "P2X=7", "--",
                                      "sh", "-c", 'echo "$P2X"; tc qdisc add dev lo root netem delay 1ms; exit 5'])
    assert result.exit_code == 5, result.output
    report = json.loads(result.stdout)
    assert report["exit_status"] == 5
    assert report["stdout"] == "7\n"
    assert report["stderr"] == ""  # netem exists in the guest, so tc printed no error
    assert report["kernel_release"].startswith("6.")

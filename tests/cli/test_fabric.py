"""`pi2 status/down/clean`: one-line error without root; JSON reflects a real run (root)."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from testbed.cli import pi2
from testbed.errors import NeedsRootError
from testbed.kernel.links import LinkBuilder
from testbed.kernel.names import RunRegistry


@pytest.mark.parametrize("args", [["status"], ["down", "k3x9"], ["clean"]])
def test_needs_root(monkeypatch, args) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(pi2, args)
    assert isinstance(result.exception, NeedsRootError) and "sudo" in str(result.exception)


@pytest.mark.root
def test_status_then_down_json() -> None:
    reg = RunRegistry.create()
    try:
        with LinkBuilder(reg) as lb:
            ns = lb.namespace("a")
        status = json.loads(CliRunner().invoke(pi2, ["status", "--json"]).output)
        run = next(r for r in status["runs"] if r["run_id"] == reg.run_id)
        assert run["objects"] == [{"kind": "netns", "name": ns, "alive": True}]
        down = json.loads(CliRunner().invoke(pi2, ["down", reg.run_id, "--json"]).output)
        assert down["removed"]["namespaces"] == [ns]
    finally:
        if reg.path.exists():
            CliRunner().invoke(pi2, ["down", reg.run_id])

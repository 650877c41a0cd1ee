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


@pytest.mark.root
def test_clean_lists_what_it_leaves_and_sweeps_only_on_request(monkeypatch, tmp_path) -> None:
    """`pi2 clean` names the p2 objects no registry records and leaves them; `--sweep` lists them
    and removes them only after a yes."""
    from functools import partial

    from testbed.cli import fabric
    from testbed.kernel import cleanup, netns

    # Only our registry directory and our object: never anyone else's runs on a shared machine.
    monkeypatch.setattr(fabric, "clean", partial(cleanup.clean, directory=tmp_path))
    monkeypatch.setattr(fabric, "unrecorded", partial(cleanup.unrecorded, frozenset({"mybo"}), tmp_path))
    netns.create("p2mybox")
    try:
        plain = CliRunner().invoke(pi2, ["clean"])
        assert plain.exit_code == 0 and "left alone" in plain.output and "namespace p2mybox" in plain.output
        assert netns.exists("p2mybox")
        refused = CliRunner().invoke(pi2, ["clean", "--sweep"], input="n\n")
        assert "namespace p2mybox" in refused.output and netns.exists("p2mybox")
        swept = CliRunner().invoke(pi2, ["clean", "--sweep"], input="y\n")
        assert swept.exit_code == 0 and not netns.exists("p2mybox")
    finally:
        netns.remove("p2mybox")


@pytest.mark.root
def test_status_reports_a_bad_registry_in_one_line(monkeypatch, tmp_path) -> None:
    from functools import partial

    from testbed.cli import fabric
    from testbed.kernel import cleanup

    (tmp_path / "zzz1.jsonl").write_text("{}\n")
    monkeypatch.setattr(fabric, "status", partial(cleanup.status, directory=tmp_path))
    result = CliRunner().invoke(pi2, ["status"])
    assert result.exit_code == 0 and "unreadable registry" in result.output and "zzz1" in result.output

"""`pi2 doctor`: the probe's findings rendered, the `auto` choice, and one-line failures."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import yaml
from click.testing import CliRunner

from testbed.cli import main, pi2
from testbed.kernel import probe
from testbed.plan.capabilities import Capabilities
from testbed.plan.profiles import PROFILE_DIR

doctor_module = importlib.import_module("testbed.cli.doctor")  # `testbed.cli.doctor` the attribute is the command
# kernel-notes.md's host kernel, minus cls_bpf: no shipped profile can gate there.
NO_BPF = {"tbf", "htb", "pfifo", "bfifo", "clsact", "ingress", "u32", "mirred", "bridge", "veth", "ifb", "netns"}


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the console entry point (which turns TestbedError into one line) as `pi2 ARGS`."""
    monkeypatch.setattr(sys, "argv", ["pi2", *args])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return int(info.value.code), out, err


def test_not_root_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(probe.os, "geteuid", lambda: 1000)
    code, out, err = run_main(monkeypatch, capsys, "doctor")
    assert code == 2
    assert out == ""
    assert err == "pi2: error: pi2 doctor needs root (CAP_NET_ADMIN) to create a probe namespace: run it with sudo\n"


def test_no_workable_profile_is_one_line_and_nonzero(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(doctor_module, "probe_capabilities", lambda purpose: Capabilities.from_available(NO_BPF, "9.9-nobpf"))
    code, out, err = run_main(monkeypatch, capsys, "doctor")
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("pi2: error: no tc profile fits kernel 9.9-nobpf: ") and "shaper lacks ['bpf']" in err
    assert "Capabilities of kernel 9.9-nobpf" in out  # the tables still show what is there


def test_json_without_a_workable_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_module, "probe_capabilities", lambda purpose: Capabilities.from_available(NO_BPF, "9.9-nobpf"))
    result = CliRunner().invoke(pi2, ["doctor", "--json"])
    assert result.exit_code != 0
    report = json.loads(result.stdout)
    assert report["auto"] is None
    assert report["problem"].startswith("no tc profile fits")
    assert report["capabilities"]["classifier"]["bpf"]["available"] is False


def auto_by_hand(caps: Capabilities) -> str | None:
    """What `auto` must pick, worked out from the raw YAML files rather than by select_profile:
    the complete profile of lowest (auto_rank, name) all of whose declared needs this kernel has."""
    best = None
    for path in PROFILE_DIR.glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        parts = raw["primitives"].values()
        needs = set(raw["needs"]) | {name for part in parts for name in part["needs"]}
        if all(part["kind"] != "unavailable" for part in parts) and all(caps.has(n) for n in needs):
            best = min(best or (raw["auto_rank"], raw["name"]), (raw["auto_rank"], raw["name"]))
    return None if best is None else best[1]


@pytest.mark.root
def test_doctor_on_this_kernel() -> None:
    result = CliRunner().invoke(pi2, ["doctor", "--json"])
    report = json.loads(result.stdout)
    caps = Capabilities.from_dict(report)
    assert caps.has("netns")
    expected = auto_by_hand(caps)
    assert report["auto"] == expected
    assert (result.exit_code == 0) == (expected is not None)
    by_kind = {(r["primitive"], r["kind"]): r for r in report["primitives"]}
    assert by_kind[("delay", "netem")]["supported"] == caps.has("netem")

    table = CliRunner().invoke(pi2, ["doctor"], terminal_width=200)
    assert f"Capabilities of kernel {caps.kernel_release}" in table.stdout
    if expected is not None:
        assert f"--profile auto picks {expected}" in table.stdout

"""The user-mode-linux guest: real netem on a real veth, exit status and output, and nothing left behind.

Each test boots a real guest (≈3 s). Objects made inside the guest vanish with it at poweroff, so those tests need
no teardown of their own; what must not leak is on the host: linux.uml processes and the temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import pytest

from testbed.errors import GuestError
from testbed.kernel import guest as guest_mod
from testbed.kernel.guest import GuestSpec, run_in_guest
from testbed.kernel.names import new_run_id, object_name


def boots(test):
    """Marks a test that boots a real guest: root-marked, skipped without UML or when already inside a guest."""
    for mark in (pytest.mark.root,
                 pytest.mark.skipif(shutil.which("linux.uml") is None, reason="needs Debian package user-mode-linux"),
                 pytest.mark.skipif(os.environ.get("PI2_IN_GUEST") == "1", reason="inside a guest: no nested UML")):
        test = mark(test)
    return test


NETEM_DELAY_MS = 10.0
_RTT = re.compile(r"time=([0-9.]+) ms")


def _live_group_members(pgid: int) -> list[int]:
    """Host PIDs, not zombies, whose process group is `pgid` (linux.uml leads its own group)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[str]]]:
    """Record (PID, argv) of every guest the runner boots (a spy: the real process still runs)."""
    seen: list[tuple[int, list[str]]] = []

    class RecordingPopen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, args, **kwargs) -> None:
            super().__init__(args, **kwargs)
            if any(str(arg).startswith("umid=") for arg in args):  # a boot, not `linux.uml --version`
                seen.append((self.pid, list(args)))

    monkeypatch.setattr(guest_mod.subprocess, "Popen", RecordingPopen)
    return seen


def _assert_nothing_left(pid: int, argv: list[str]) -> None:
    assert _live_group_members(pid) == []
    # the runner names the guest (umid=) after its temporary directory, which must be gone
    umid = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("umid="))
    assert not (Path(tempfile.gettempdir()) / umid).exists()


def _rtts_ms(ping_output: str) -> list[float]:
    return [float(t) for t in _RTT.findall(ping_output)]


@boots
def test_netem_delays_a_real_ping_over_a_veth() -> None:
    run = new_run_id()
    a, b = object_name(run, "a"), object_name(run, "b")
    script = f"""
set -e
ip netns add {a}; ip netns add {b}
ip link add {a}v netns {a} type veth peer name {b}v netns {b}
ip -n {a} addr add 10.254.0.1/24 dev {a}v; ip -n {b} addr add 10.254.0.2/24 dev {b}v
ip -n {a} link set {a}v up; ip -n {b} link set {b}v up
ip netns exec {a} busybox ping -c 5 -i 0.2 10.254.0.2
echo @@p2@@
ip netns exec {a} tc qdisc add dev {a}v root netem delay {NETEM_DELAY_MS:g}ms
ip netns exec {a} busybox ping -c 10 -i 0.2 10.254.0.2
echo @@p2@@
ip netns exec {a} tc -s qdisc show dev {a}v
"""
    result = run_in_guest(GuestSpec(command=("sh", "-c", script), timeout_s=120))
    assert result.exit_status == 0, result.stderr
    plain, delayed, stats = result.stdout.split("@@p2@@\n")
    plain_rtts, delayed_rtts = _rtts_ms(plain), _rtts_ms(delayed)
    assert len(plain_rtts) == 5 and len(delayed_rtts) == 10, result.stdout
    # netem holds each echo request >= the delay; the reply path is not shaped, so RTT - delay is the guest's own
    # latency (sub-ms idle, but UML wake-ups can take 7-200 ms under load: only the minimum is bounded above).
    assert min(plain_rtts) < NETEM_DELAY_MS / 2
    assert min(delayed_rtts) >= NETEM_DELAY_MS
    assert min(delayed_rtts) < NETEM_DELAY_MS + statistics.median(plain_rtts) + 5.0
    assert re.search(r"qdisc netem \S+ root .*delay 10ms", stats), stats
    sent = re.search(r"Sent \d+ bytes (\d+) pkt", stats)
    assert sent is not None and int(sent.group(1)) >= 10, stats  # every echo request went through netem


@boots
def test_exit_status_output_and_modules_come_back_and_nothing_is_left(spawned: list[tuple[int, list[str]]]) -> None:
    script = "cut -d' ' -f1 /proc/modules; echo to-stderr >&2; exit 42"
    result = run_in_guest(GuestSpec(command=("sh", "-c", script), timeout_s=120))
    assert result.exit_status == 42
    assert result.stderr == "to-stderr\n"
    loaded = set(result.stdout.split())
    assert {"sch_netem", "sch_cbs", "act_police", "act_gact", "cls_flower", "openvswitch", "veth"} <= loaded
    assert result.kernel_release in {p.name for p in guest_mod.UML_MODULES_ROOT.iterdir()}
    assert [pid for pid, _ in spawned] == [result.uml_pid]
    _assert_nothing_left(*spawned[0])


@boots
def test_python_and_this_checkout_work_in_the_guest_with_pi2_variables_forwarded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PI2_PROFILE", "netem")
    code = "import os, testbed; print(testbed.__file__); print(os.environ['PI2_PROFILE'], os.environ['X'])"
    result = run_in_guest(GuestSpec(command=("python", "-c", code), env=(("X", "y"),), timeout_s=120))
    assert result.exit_status == 0, result.stderr
    import testbed
    assert result.stdout.splitlines() == [testbed.__file__, "netem y"]


@boots
def test_timeout_kills_the_guest_and_every_process_it_started(spawned: list[tuple[int, list[str]]]) -> None:
    with pytest.raises(GuestError, match="did not finish within 8 s"):
        run_in_guest(GuestSpec(command=("sleep", "600"), timeout_s=8))
    assert len(spawned) == 1
    _assert_nothing_left(*spawned[0])


@boots
def test_a_module_the_guest_kernel_lacks_fails_loudly() -> None:
    with pytest.raises(GuestError, match=r"could not load module\(s\) \['sch_p2nosuch'\]"):
        run_in_guest(GuestSpec(command=("true",), modules=("sch_p2nosuch",), timeout_s=120))


@pytest.mark.parametrize("cwd", ["/proc/self", "/sys", "/dev/shm", "relative/dir"])
def test_working_directories_the_guest_cannot_see_are_refused(cwd: str) -> None:
    with pytest.raises(GuestError, match="guest: "):
        GuestSpec(command=("true",), cwd=cwd)


def test_a_working_directory_below_a_guest_tmpfs_is_mounted_again_from_the_host() -> None:
    from testbed.kernel.guest import _init_script

    script = _init_script(GuestSpec(command=("true",), cwd="/tmp/ci/checkout"), Path("/tmp/share"), "6.1.0")
    assert "mount -r -t hostfs -o /tmp/ci/checkout hostfs /tmp/ci/checkout" in script
    assert "hostfs -o /srv/x hostfs /srv/x" not in _init_script(GuestSpec(command=("true",), cwd="/srv/x"),
                                                                 Path("/tmp/share"), "6.1.0")


def test_an_empty_command_is_refused() -> None:
    with pytest.raises(GuestError, match="no command given"):
        GuestSpec(command=())

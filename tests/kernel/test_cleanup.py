"""down() removes exactly one run (stopping it if in use); clean() removes what a SIGKILLed build
left behind and never an object no registry records; sweep() removes exactly what it listed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from testbed.errors import KernelError
from testbed.kernel import cleanup, netns
from testbed.kernel.links import LinkBuilder
from testbed.kernel.names import RunRegistry, is_ours
from testbed.kernel.netlink import NetlinkBatch

pytestmark = pytest.mark.root

# A build that never ends on its own: namespaces, root-namespace veth ends, bridges, a helper.
BUILD = """
import subprocess, sys
from testbed.kernel.links import LinkBuilder
from testbed.kernel.names import RunRegistry
reg = RunRegistry.create(sys.argv[1])
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
reg.record_pid(helper.pid)
with LinkBuilder(reg) as lb:
    for i in range(1000):
        ns = lb.namespace(f"n{i}")
        lb.veth(f"a{i}", f"b{i}", None, ns)
        if i % 10 == 0:
            lb.bridge(f"br{i}", ns)
        print(i, flush=True)
"""


def ours(run_id: str) -> list[str]:
    """Every object named for `run_id` in the root namespace and under /run/netns."""
    names = [n for n in netns.list_names() if is_ours(n, frozenset({run_id}))]
    names += [n for n in cleanup.link_names(None) if is_ours(n, frozenset({run_id}))]
    return names


def test_down_removes_exactly_its_run(builder, run) -> None:
    other = RunRegistry.create()
    try:
        with LinkBuilder(other) as lb:
            kept = lb.namespace("k")
        ns = builder.namespace("a")
        root_end, _ = builder.veth("x", "y", None, ns)
        removed = cleanup.down(run.run_id)
        assert set(removed["namespaces"]) == {ns} and removed["links"] == [root_end]
        assert ours(run.run_id) == [] and netns.exists(kept)
        with pytest.raises(KernelError, match="no registry"):
            cleanup.down(run.run_id)
    finally:
        cleanup.down(other.run_id)
    assert not netns.exists(kept)


def test_clean_after_sigkill_mid_build(run) -> None:
    run_id = run.run_id
    run.delete()  # the child makes the registry for this run id itself
    child = subprocess.Popen([sys.executable, "-c", BUILD, run_id], stdout=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:  # type: ignore[union-attr]
            if int(line.split()[0]) >= 25:
                break
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    reg = RunRegistry.load(run_id)
    helper = reg.of_kind("pid")[0]["pid"]
    assert len(ours(run_id)) >= 2 * 25
    removed = cleanup.clean(frozenset({run_id}))
    assert ours(run_id) == []
    assert helper in removed["pids"] and run_id in removed["registries"]
    for _ in range(100):  # the helper was SIGKILLed; its parent is gone, so init reaps it
        if not os.path.exists(f"/proc/{helper}") or open(f"/proc/{helper}/stat").read().split()[2] == "Z":
            break
        time.sleep(0.01)
    else:
        pytest.fail(f"helper pid {helper} survived clean()")
    again = cleanup.clean(frozenset({run_id}))
    assert again == {"stopped": [], "pids": [], "links": [], "namespaces": [], "registries": [], "unreadable": []}


@pytest.fixture
def foreign():
    """Objects named like ours that pi2 never made: a root-namespace veth p2user0a (peer xuser0b),
    a namespace p2mybox, and a link p2zzzzq inside a foreign namespace (issue 18's example)."""
    made = ["xp2foreign", "p2mybox"]

    def present() -> dict[str, bool]:
        return {"p2user0a": "p2user0a" in cleanup.link_names(None), "xuser0b": "xuser0b" in cleanup.link_names(None),
                "p2mybox": netns.exists("p2mybox"), "p2zzzzq": "p2zzzzq" in cleanup.link_names("xp2foreign")}

    try:
        for name in made:
            netns.create(name)
        with netns.iproute(None) as ipr:
            ipr.link("add", ifname="p2user0a", kind="veth", peer={"ifname": "xuser0b"})
        with netns.iproute("xp2foreign") as ipr:
            ipr.link("add", ifname="p2zzzzq", kind="veth", peer={"ifname": "xzzzzq"})
        yield present
    finally:
        if "p2user0a" in cleanup.link_names(None):
            with NetlinkBatch(None) as nl:
                nl.delete_link("p2user0a", "test veth")
                nl.commit(tolerate=cleanup.GONE)
        for name in made:
            netns.remove(name)


def test_clean_never_touches_what_no_registry_recorded(foreign, tmp_path) -> None:
    # A registry directory of our own, so clean() of *every* run there stops no one else's run.
    run = RunRegistry.create(directory=tmp_path)
    try:
        with LinkBuilder(run) as lb:
            ns = lb.namespace("a")
            lb.veth("x", "y", None, ns)
        assert all(foreign().values())
        listed = {str(obj) for obj in cleanup.unrecorded(directory=tmp_path)}
        assert {"link p2user0a in the root namespace", "namespace p2mybox",
                "link p2zzzzq in namespace xp2foreign"} <= listed
        assert not any(run.run_id in name for name in listed)  # what a registry records is not "unrecorded"
        removed = cleanup.clean(directory=tmp_path)
        assert removed["registries"] == [run.run_id] and ns in removed["namespaces"]
        assert all(foreign().values()), foreign()
        assert ours(run.run_id) == []
    finally:
        if run.path.exists():
            cleanup.down(run.run_id, tmp_path)


def test_sweep_removes_exactly_the_list(foreign) -> None:
    listed = [obj for obj in cleanup.unrecorded() if obj.name in ("p2user0a", "p2zzzzq")]
    removed = cleanup.sweep(listed)
    assert sorted(removed["links"]) == ["p2user0a", "p2zzzzq"]
    assert foreign() == {"p2user0a": False, "xuser0b": False, "p2mybox": True, "p2zzzzq": False}
    assert cleanup.sweep(listed) == {"links": [], "namespaces": []}


# A run in use by another process: SIGTERM makes it tear down itself (as pi2 does), exit 143.
IN_USE = """
import signal, sys, time
from testbed.errors import Terminated
from testbed.kernel import cleanup
from testbed.kernel.links import LinkBuilder
from testbed.kernel.names import RunRegistry

def stop(signum, frame):
    raise Terminated(signum)

signal.signal(signal.SIGTERM, stop if sys.argv[1] == "polite" else signal.SIG_IGN)
reg = RunRegistry.create()
try:
    with LinkBuilder(reg) as lb:
        lb.namespace("h")
        lb.veth("x", "y", None, reg.namespaces[0])
    print(reg.run_id, flush=True)
    time.sleep(600)
except Terminated:
    sys.exit(143)
finally:
    cleanup.down(reg.run_id)
"""


@pytest.mark.parametrize("manner", ["polite", "deaf"])
def test_down_stops_the_run_it_removes(monkeypatch, manner) -> None:
    monkeypatch.setattr(cleanup, "STOP_WAIT_S", 2.0)  # the deaf run ignores SIGTERM: SIGKILL after this
    child = subprocess.Popen([sys.executable, "-c", IN_USE, manner], stdout=subprocess.PIPE, text=True)
    try:
        run_id = child.stdout.readline().split()[0]  # type: ignore[union-attr]
        assert RunRegistry.load(run_id).busy()
        removed = cleanup.down(run_id)
        assert removed["stopped"] == [child.pid]
        assert child.wait(5) == (143 if manner == "polite" else -signal.SIGKILL)
        assert ours(run_id) == [] and not (cleanup.REGISTRY_DIR / f"{run_id}.jsonl").exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("content", [b"", b"{}\n", b"\xff garbage"], ids=["empty", "json object", "garbage"])
def test_a_bad_registry_never_stops_another_run(tmp_path, content) -> None:
    """Issue 18: `echo '{}' > /run/pi2/zzz1.json` broke status, clean, down and every run's teardown."""
    (tmp_path / "zzz1.jsonl").write_bytes(content)
    run = RunRegistry.create(directory=tmp_path)
    with LinkBuilder(run) as lb:
        ns = lb.namespace("a")
    report = cleanup.status(tmp_path)
    assert [r["run_id"] for r in report["runs"]] == [run.run_id] and "zzz1" in report["unreadable"][0]
    assert cleanup.down(run.run_id, tmp_path)["namespaces"] == [ns]  # a run's own teardown
    with pytest.raises(KernelError, match="zzz1.*pi2 clean"):
        cleanup.down("zzz1", tmp_path)
    removed = cleanup.clean(directory=tmp_path)
    assert len(removed["unreadable"]) == 1 and not (tmp_path / "zzz1.jsonl").exists()

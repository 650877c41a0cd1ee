"""down() removes exactly one run; clean() removes what a SIGKILLed build left behind."""

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
    assert again == {"pids": [], "links": [], "namespaces": [], "registries": []}

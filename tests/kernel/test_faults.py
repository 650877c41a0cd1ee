"""Faults a real run meets: SIGKILL at random points of build, run and teardown, then `pi2 clean`
(nothing of the run left, nothing else touched: foreign ``p2…`` objects survive); SIGTERM (the run
tears itself down and exits 143); a second run beside one in use (refused, naming it); `pi2 down`
of a run in use (stops it); bad plans given to the kernel commands (nothing built).

Every child runs the bundled digits network's plan (compiled with a short calibration) through
`testbed.fabric.live.build_fabric` and `testbed.infer.session.run_inference`, as `pi2 infer`
does, with its registries in a private PI2_RUN_DIR: the suite's `pi2 clean` then sees only the
suite's runs and can never stop another user's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.kernel import cleanup, netns
from testbed.kernel.names import REGISTRY_SUFFIX, RunRegistry
from testbed.kernel.netlink import NetlinkBatch

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
NETWORK = ROOT / "testbed" / "networks" / "digits-mlp.npz"
SEEDS = (1, 2, 3)
PHASES = ("build", "run", "teardown")

# Prints a line at every step, so the test can kill it at a chosen point of each phase.
CHILD = """
import sys
import numpy as np
from testbed.fabric.live import build_fabric
from testbed.infer.inputs import network_inputs
from testbed.infer.session import run_inference
from testbed.model.netfile import load_network
from testbed.plan.fabric_plan import load_plan

plan = load_plan(sys.argv[1])
x = network_inputs(load_network(sys.argv[2]), None, "test", int(sys.argv[3])).x
print("start", flush=True)
with build_fabric(plan, progress=lambda stage, done, total: print(stage, done, total, flush=True)) as fabric:
    print("built", fabric.run_id, flush=True)
    run_inference(plan, fabric, x, progress=lambda n: print("sample", n, flush=True))
    print("ran", flush=True)
print("down", flush=True)
"""


def pi2(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from testbed.cli import main; main()", *args], env=env,
                          capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory) -> Path:
    """The bundled network's plan (shaper profile; 50 calibration samples keep compiling short)."""
    path = tmp_path_factory.mktemp("faults") / "plan.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = pi2(["compile", str(NETWORK), "--profile", "shaper", "--calibration", "50", "-o", str(path)], env)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    return {**os.environ, "PYTHONPATH": str(ROOT), "PI2_RUN_DIR": str(run_dir), "PI2_WAIT_S": "0"}


@pytest.fixture
def foreign():
    """Objects named like a run's that no pi2 made: they must survive every `pi2 clean`."""
    made = ["xp2fault", "p2boxx"]

    def present() -> dict[str, bool]:
        root = cleanup.link_names(None)
        return {"p2user0a": "p2user0a" in root, "xuser0b": "xuser0b" in root, "p2boxx": netns.exists("p2boxx"),
                "p2zzzzq": "p2zzzzq" in cleanup.link_names("xp2fault")}

    try:
        for name in made:
            netns.create(name)
        with netns.iproute(None) as ipr:
            ipr.link("add", ifname="p2user0a", kind="veth", peer={"ifname": "xuser0b"})
        with netns.iproute("xp2fault") as ipr:
            ipr.link("add", ifname="p2zzzzq", kind="veth", peer={"ifname": "xzzzzq"})
        assert all(present().values())
        yield present
    finally:
        if "p2user0a" in cleanup.link_names(None):
            with NetlinkBatch(None) as nl:
                nl.delete_link("p2user0a", "test veth")
                nl.commit(tolerate=cleanup.GONE)
        for name in made:
            netns.remove(name)


def traces(run_id: str, run_dir: Path) -> list[str]:
    """Everything of run `run_id` still in the kernel or in the registry directory."""
    tag = f"p2{run_id}"
    found = [n for n in netns.list_names() if n.startswith(tag)]
    found += [name for _, name in socket.if_nameindex() if name.startswith(tag)]
    found += [p.name for p in run_dir.iterdir() if run_id in p.name]
    return found


def run_ids(run_dir: Path) -> list[str]:
    return [p.name[: -len(REGISTRY_SUFFIX)] for p in run_dir.glob(f"*{REGISTRY_SUFFIX}")]


def kill_at(child: subprocess.Popen, phase: str, rng: random.Random) -> str:
    """Read the child's steps and SIGKILL it at a random point of `phase`; returns the last step seen."""
    assert child.stdout is not None
    # build: after a random number of the plan's 54 links, up to 0.3 s on (into tc and the gates);
    # run: 0.05–2 s into 60 samples (≈ 4 s); teardown: 0–50 ms after the last sample.
    target, pause = {"build": (("links", rng.randint(1, 54)), rng.uniform(0, 0.3)),
                     "run": (("built", 0), rng.uniform(0.05, 2.0)),
                     "teardown": (("ran", 0), rng.uniform(0, 0.05))}[phase]
    last = ""
    for line in child.stdout:
        last = line.strip()
        words = last.split()
        if words and words[0] == target[0] and (target[0] != "links" or int(words[1]) >= target[1]):
            time.sleep(pause)
            break
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    return last


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_then_clean_leaves_nothing_of_the_run_and_touches_nothing_else(plan_path, env, foreign, phase,
                                                                              seed) -> None:
    run_dir = Path(env["PI2_RUN_DIR"])
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(plan_path), str(NETWORK), "60"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        step = kill_at(child, phase, random.Random(f"{phase}{seed}"))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, f"the child ended on its own at {step!r}"
    ids = run_ids(run_dir)
    assert len(ids) <= 1
    done = pi2(["clean"], env)
    assert done.returncode == 0, done.stderr
    for run_id in ids:
        assert traces(run_id, run_dir) == [], f"killed at {step!r}; clean said {done.stdout!r}"
    assert list(run_dir.glob("*.jsonl")) == [] and list(run_dir.glob(".*.tmp")) == []
    assert all(foreign().values()), f"clean touched foreign objects: {foreign()}; it said {done.stdout!r}"
    assert "left alone" in done.stdout and "p2user0a" in done.stdout  # and told the user so


def _wait_in_use(run_dir: Path, child: subprocess.Popen, timeout_s: float = 120) -> str:
    """The run id once `child`'s run is built and in use (its registry is locked and names a namespace)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.poll() is None:
        for run_id in run_ids(run_dir):
            reg = RunRegistry.load(run_id, run_dir)
            if reg.busy() and len(reg.namespaces) == 2 and reg.of_kind("link"):
                return run_id
        time.sleep(0.05)
    raise AssertionError(f"no run in use in {run_dir} (child exit {child.poll()})")


def test_sigterm_tears_down_and_exits_143(plan_path, env) -> None:
    run_dir = Path(env["PI2_RUN_DIR"])
    child = subprocess.Popen([sys.executable, "-c", "from testbed.cli import main; main()", "infer",
                              str(plan_path), "--limit", "400", "--json"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        run_id = _wait_in_use(run_dir, child)
        time.sleep(0.5)  # inside the build or the run
        child.send_signal(signal.SIGTERM)
        assert child.wait(120) == 143, child.stderr.read()  # type: ignore[union-attr]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert traces(run_id, run_dir) == []
    assert child.stderr.read().strip().splitlines()[-1] == "pi2: terminated"  # type: ignore[union-attr]


def test_a_second_run_refuses_beside_one_in_use_and_down_stops_it(plan_path, env) -> None:
    run_dir = Path(env["PI2_RUN_DIR"])
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(plan_path), str(NETWORK), "400"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_id = _wait_in_use(run_dir, child)
        second = pi2(["infer", str(plan_path), "--limit", "1"], env)
        assert second.returncode == 2
        assert f"run {run_id} (pid {child.pid}" in second.stderr and f"pi2 down {run_id}" in second.stderr
        down = pi2(["down", run_id], env)
        assert down.returncode == 0 and f"stopped pid {child.pid}" in down.stdout, down.stderr
        assert child.wait(30) != 0  # stopped, not finished
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert traces(run_id, run_dir) == []


BAD_PLANS = {
    "600 ports": lambda d: d["layers"][0].update(ports=d["layers"][0]["ports"] * 19),
    "window Infinity": lambda d: d["layers"][0].update(window_us=float("inf")),
    "unknown tc key": lambda d: d["layers"][0]["ports"][0]["delay_tc"].update(bogus=1),
}


@pytest.mark.parametrize("edit", BAD_PLANS.values(), ids=BAD_PLANS.keys())
@pytest.mark.parametrize("command", ["up", "infer"])
def test_bad_plan_builds_nothing(plan_path, env, tmp_path, command, edit) -> None:
    raw = json.loads(plan_path.read_text())
    edit(raw)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))  # json writes inf as Infinity
    done = pi2([command, str(bad)], env)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(f"pi2: error: {bad}")
    assert "Traceback" not in done.stderr
    # No registry was ever made, and a run records its registry before its first object: nothing
    # was built. (A diff of the machine's namespaces would also see other users' runs.)
    assert list(Path(env["PI2_RUN_DIR"]).iterdir()) == []

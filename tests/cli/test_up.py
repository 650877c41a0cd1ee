"""`pi2 up PLAN`: builds, prints the run id and its objects, and `pi2 down RUN` removes them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from testbed.cli import pi2
from testbed.kernel import netns
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.plan.profiles import load_profile


@pytest.fixture
def plan_file(tmp_path):
    net = Pi2Network((DenseLayer(np.array([[0.5, -1.5], [1.5, 2.5]]), 1),), (2,))
    plan = compile_network(net, Realisation.from_profile(load_profile("shaper")), 1000.0, np.zeros((1, 2)),
                           prune_margin=None, lead=0.0)
    return plan.save(tmp_path / "plan.json")


@pytest.mark.root
def test_up_json_then_down(plan_file):
    runner = CliRunner()
    up = runner.invoke(pi2, ["up", str(plan_file), "--json"], catch_exceptions=False)
    assert up.exit_code == 0, up.output
    report = json.loads(up.output)
    run = report["run_id"]
    try:
        kinds = [o["kind"] for o in report["objects"]]
        assert kinds.count("netns") == 2 and kinds.count("bridge") == 1 and kinds.count("link") == 5
        assert {f"p2{run}h", f"p2{run}f"} <= set(netns.list_names())
    finally:
        down = runner.invoke(pi2, ["down", run], catch_exceptions=False)
    assert down.exit_code == 0
    assert not [n for n in netns.list_names() if n.startswith(f"p2{run}")]


def test_up_rejects_a_bad_cpu_list(plan_file):
    result = CliRunner().invoke(pi2, ["up", str(plan_file), "--fabric-cpus", "one"])
    assert result.exit_code != 0 and "CPU numbers" in result.output

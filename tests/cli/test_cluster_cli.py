"""`pi2 place` prints a placement that --placement reads back; --cluster values are checked
before anything is built."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from testbed.cli import pi2
from testbed.errors import PlanError
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.plan.profiles import load_profile


@pytest.fixture
def plan_file(tmp_path):
    rng = np.random.default_rng(5)
    net = Pi2Network((DenseLayer(rng.uniform(-2, 2, (4, 4)), 1), DenseLayer(rng.uniform(-2, 2, (4, 2)), 1)), (4,))
    plan = compile_network(net, Realisation.from_profile(load_profile("shaper")), 1000.0, np.zeros((1, 4)),
                           prune_margin=None, lead=0.0, delay_lines="per-synapse")
    return plan.save(tmp_path / "plan.json")


def test_place_prints_json_and_check_reads_it_back(plan_file, tmp_path):
    runner = CliRunner()
    made = runner.invoke(pi2, ["place", str(plan_file), "--cluster", "emulated:3", "--split-ports", "4"],
                         catch_exceptions=False)
    assert made.exit_code == 0, made.output
    placement = json.loads(made.stdout)
    assert placement["hosts"] == ["localhost", "e1", "e2"]
    assert [p["neurons"] for p in placement["parts"] if p["layer"] == 0] == [[0, 2], [2, 4]]
    assert "layer 0 neurons 0..1 (4 ports) on" in made.stderr
    placement["parts"] = [{"layer": 0, "host": "e2", "neurons": [0, 4]}, {"layer": 1, "host": "e1", "neurons": [0, 2]}]
    path = tmp_path / "placement.json"
    path.write_text(json.dumps(placement))
    checked = runner.invoke(pi2, ["place", str(plan_file), "--cluster", "emulated:3", "--check", str(path)])
    assert checked.exit_code == 0 and "layer 0 neurons 0..3 (8 ports) on e2" in checked.stderr
    bad = runner.invoke(pi2, ["place", str(plan_file), "--cluster", "emulated:2", "--check", str(path)])
    assert isinstance(bad.exception, PlanError) and "differ from --cluster" in str(bad.exception)


@pytest.mark.parametrize("argv, message", [
    (["infer", "--cluster", "server1,localhost"], "first host must be localhost"),
    (["infer", "--split-ports", "8"], "--placement and --split-ports need --cluster"),
    (["doctor", "--cluster", "emulated:0"], "emulated:N with N in 1..9"),
])
def test_bad_cluster_options_fail_before_building(argv, message):
    result = CliRunner().invoke(pi2, argv)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("extra, design", [([], "shared"), (["--split-ports", "20"], "per-synapse"),
                                           (["--split-ports", "20", "--delay-lines", "shared"], "shared")])
def test_cluster_runs_keep_shared_lines_unless_a_layer_is_split(monkeypatch, extra, design):
    seen = []

    def infer(source, options, *args, **kwargs):
        seen.append(options)
        raise PlanError("stopped before building")

    monkeypatch.setattr("testbed.cli.infer.infer", infer)
    result = CliRunner().invoke(pi2, ["infer", "--tau", "10ms", "--cluster", "emulated:2", *extra])
    assert "stopped before building" in str(result.exception)
    assert [(o.backend, o.delay_lines) for o in seen] == [("mininet", design)]

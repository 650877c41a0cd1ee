"""`pi2 energy`: JSON for scripts, a table for people, one-line errors."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from testbed.cli import pi2
from testbed.model.netfile import save_network
from testbed.model.network import DenseLayer, Pi2Network


def test_json_for_an_mlp_workload():
    result = CliRunner().invoke(pi2, ["energy", "--workload", "mlp:784-500-10", "--k", "1,30", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["workload"]["arrivals"] == 4 * 784 * 500 + 4 * 500 * 10
    assert {s["system"] for s in data["systems"]} >= {"TrueNorth", "Loihi", "SpiNNaker", "SpiNNaker2", "Tianjic", "ODIN"}
    assert data["brain"] is None


def test_network_file_and_measured_events(tmp_path):
    rng = np.random.default_rng(0)
    net = Pi2Network(layers=(DenseLayer(rng.normal(size=(8, 4)), k=1), DenseLayer(rng.normal(size=(4, 2)), k=1)),
                     input_shape=(8,))
    path = save_network(net, tmp_path / "net.npz")
    (tmp_path / "m.json").write_text(json.dumps({"0": 8.0}))
    result = CliRunner().invoke(pi2, ["energy", str(path), "--measured", str(tmp_path / "m.json"), "--json"])
    assert result.exit_code == 0, result.output
    layers = json.loads(result.output)["workload"]["layers"]
    assert [layer["events"] for layer in layers] == [8.0, 8.0]


def test_brain_table_and_plots(tmp_path):
    result = CliRunner().invoke(pi2, ["energy", "--workload", "brain", "--plots", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Brain-scale projection" in result.output and "hundreds" in result.output
    assert (tmp_path / "brain_power_generations.png").exists()


def test_bad_generation_is_one_line_error():
    result = CliRunner().invoke(pi2, ["energy", "--workload", "brain", "--generation", "warp"])
    assert result.exit_code != 0 and "chiplet-aer" in str(result.exception)

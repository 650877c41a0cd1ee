"""`pi2 import` / `pi2 export` through click: JSON output, the text line, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from testbed.cli import pi2
from testbed.errors import ImportFormatError
from testbed.model.netfile import load_network, save_network
from testbed.model.network import DenseLayer, Pi2Network

pytest.importorskip("nir")


def net_file(path):
    rng = np.random.default_rng(0)
    net = Pi2Network((DenseLayer(rng.normal(size=(6, 4)).astype(np.float32).astype(np.float64), 2),
                      DenseLayer(rng.normal(size=(4, 3)).astype(np.float32).astype(np.float64), 3)), (6,))
    return save_network(net, path), net


def test_export_and_import_nir_json(tmp_path):
    path, net = net_file(tmp_path / "a.npz")
    result = CliRunner().invoke(pi2, ["export", str(path), "--format", "nir", "-o", str(tmp_path / "a.nir"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"network": str(path), "format": "nir", "output": str(tmp_path / "a.nir")}
    result = CliRunner().invoke(pi2, ["import", str(tmp_path / "a.nir"), "-o", str(tmp_path / "b.npz"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["k"] == [2, 3] and summary["classes"] == 3 and summary["input_shape"] == [6]
    x = np.random.default_rng(1).normal(size=(4, 6))
    np.testing.assert_array_equal(load_network(tmp_path / "b.npz").scores(x), net.scores(x))


def test_import_text_line(tmp_path):
    path, _ = net_file(tmp_path / "a.npz")
    CliRunner().invoke(pi2, ["export", str(path), "-o", str(tmp_path / "a.nir")])
    result = CliRunner().invoke(pi2, ["import", str(tmp_path / "a.nir"), "--k", "2,3", "-o", str(tmp_path / "b.npz")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {tmp_path / 'b.npz'}: 2 layers 6 → 3 classes, K=2,3"


def test_bad_k_list_is_a_usage_error(tmp_path):
    path, _ = net_file(tmp_path / "a.npz")
    result = CliRunner().invoke(pi2, ["import", str(path), "--k", "1,x", "-o", str(tmp_path / "b.npz")])
    assert result.exit_code == 2
    assert "'1,x' is not a comma-separated list of integers" in result.output


def test_library_errors_reach_the_caller(tmp_path):
    path, _ = net_file(tmp_path / "a.npz")
    result = CliRunner().invoke(pi2, ["import", str(path), "--k", "1", "-o", str(tmp_path / "b.npz")])
    assert isinstance(result.exception, ImportFormatError)  # pi2's main() prints it as one line, exit 2
    assert "unknown file type '.npz'" in str(result.exception)


def test_help_teaches():
    result = CliRunner().invoke(pi2, ["import", "--help"])
    assert result.exit_code == 0
    assert "pi2 import teacher.pt --k 1,30" in result.output and "out×in" in result.output


@pytest.mark.torch
def test_import_torch_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(6, 4, bias=False), torch.nn.Linear(4, 3, bias=False))
    torch.save(model.state_dict(), tmp_path / "t.pt")
    result = CliRunner().invoke(pi2, ["import", str(tmp_path / "t.pt"), "--k", "1,2", "--arch", "mlp",
                                      "-o", str(tmp_path / "t.npz"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["import"]["orientation"] == "teacher" and summary["k"] == [1, 2]
    np.testing.assert_array_equal(load_network(tmp_path / "t.npz").layers[0].weight, model[0].weight.detach().numpy().T)


def test_dataset_records_its_normalisation(tmp_path):
    pytest.importorskip("sklearn")  # the digits data set ships with scikit-learn
    path, _ = net_file(tmp_path / "a.npz")
    CliRunner().invoke(pi2, ["export", str(path), "-o", str(tmp_path / "a.nir")])
    result = CliRunner().invoke(pi2, ["import", str(tmp_path / "a.nir"), "--dataset", "digits", "-o", str(tmp_path / "b.npz")])
    assert result.exit_code == 0, result.output
    assert load_network(tmp_path / "b.npz").provenance["dataset"] == {"name": "digits", "scale": 1 / 16, "offset": 0.0}


@pytest.mark.torch
def test_import_authors_lenet5_student_text(tmp_path):
    # the report: this layout used to fail with "chain neither as teacher nor as student"
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    state = {"conv1.cnn.weight": rng.normal(size=(25, 6)), "conv2.cnn.weight": rng.normal(size=(150, 16)),
             "fc1.weight": rng.normal(size=(256, 120)), "fc2.weight": rng.normal(size=(120, 84)),
             "fc3.weight": rng.normal(size=(84, 10)) * 2}
    torch.save({name: torch.tensor(v, dtype=torch.float32) for name, v in state.items()}, tmp_path / "s.pt")
    result = CliRunner().invoke(pi2, ["import", str(tmp_path / "s.pt"), "--k", "12,50,85,25,75",
                                      "-o", str(tmp_path / "lenet.npz")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {tmp_path / 'lenet.npz'}: 5 layers 1×28×28 → 10 classes, K=12,50,85,25,75"
    beyond = int((np.abs(np.concatenate([v.ravel() for v in state.values()])) > 3).sum())
    assert result.stderr.strip().startswith(f"note: {beyond} weights lie beyond ±c = 3")
    net = load_network(tmp_path / "lenet.npz")
    assert net.rectified and net.scales == (1.0, 10.0, 10.0, 10.0, 10.0)
    uniform = CliRunner().invoke(pi2, ["import", str(tmp_path / "s.pt"), "--k", "12,50,85,25,75", "--constants", "uniform",
                                       "-o", str(tmp_path / "u.npz"), "--json"])
    assert json.loads(uniform.stdout)["import"]["constants"] == "uniform"
    assert load_network(tmp_path / "u.npz").uniform


def test_dataset_normalisation_must_fit_the_input_channels(tmp_path):
    path, _ = net_file(tmp_path / "a.npz")
    CliRunner().invoke(pi2, ["export", str(path), "-o", str(tmp_path / "a.nir")])
    result = CliRunner().invoke(pi2, ["import", str(tmp_path / "a.nir"), "--dataset", "cifar10", "-o", str(tmp_path / "b.npz")])
    assert "one number per input channel (6)" in str(result.exception)
    assert not (tmp_path / "b.npz").exists()
    result = CliRunner().invoke(pi2, ["import", str(tmp_path / "a.nir"), "--dataset", "imagenet", "-o", str(tmp_path / "b.npz")])
    assert result.exit_code == 2 and "'imagenet' is not one of" in result.output

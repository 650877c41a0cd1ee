"""import_network / export_network: dispatch by file type, provenance, network files written."""

from __future__ import annotations

import numpy as np
import pytest

from testbed.errors import ImportFormatError
from testbed.model.formats import export_network, import_network
from testbed.model.netfile import load_network, save_network
from testbed.model.network import DenseLayer, Pi2Network

pytest.importorskip("nir")


def f32_net():
    rng = np.random.default_rng(0)
    layers = (DenseLayer(rng.normal(size=(6, 4)).astype(np.float32).astype(np.float64), 2),
              DenseLayer(rng.normal(size=(4, 3)).astype(np.float32).astype(np.float64), 3))
    return Pi2Network(layers, (6,), provenance={"seed": 1})


def test_export_then_import_nir(tmp_path):
    net = f32_net()
    save_network(net, tmp_path / "a.npz")
    export_network(tmp_path / "a.npz", "nir", tmp_path / "a.nir")
    back = import_network(tmp_path / "a.nir", tmp_path / "b.npz", None,
                          dataset={"name": "digits", "scale": 0.25, "offset": 0.0})
    assert load_network(tmp_path / "b.npz").provenance == {"seed": 1, "dataset": {"name": "digits", "scale": 0.25,
                                                                                  "offset": 0.0}}
    x = np.random.default_rng(1).normal(size=(5, 6))
    np.testing.assert_array_equal(load_network(tmp_path / "b.npz").scores(x), net.scores(x))
    np.testing.assert_array_equal(back.scores(x), net.scores(x))


@pytest.mark.parametrize("name,kwargs,match", [
    ("net.onnx", {"k": [1]}, r"unknown file type '.onnx'; expected .pt or .pth or .nir"),
    ("net.pt", {"k": None}, "a checkpoint carries no K; give K per layer"),
    ("net.nir", {"k": None, "arch": "mlp"}, "--arch, --orientation and --constants apply to .pt checkpoints only"),
    ("net.nir", {"k": None, "orientation": "student"}, "--arch, --orientation and --constants apply to .pt checkpoints only"),
])
def test_import_refusals(tmp_path, name, kwargs, match):
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ImportFormatError, match=match):
        import_network(tmp_path / name, tmp_path / "out.npz", **kwargs)
    assert not (tmp_path / "out.npz").exists()


def test_export_refuses_unknown_format(tmp_path):
    save_network(f32_net(), tmp_path / "a.npz")
    with pytest.raises(ImportFormatError, match="export format 'onnx' is unknown"):
        export_network(tmp_path / "a.npz", "onnx", tmp_path / "a.onnx")


@pytest.mark.torch
def test_import_torch_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(6, 4, bias=False), torch.nn.Linear(4, 3, bias=False))
    torch.save(model.state_dict(), tmp_path / "t.pth")
    net = import_network(tmp_path / "t.pth", tmp_path / "t.npz", [2, 3])
    loaded = load_network(tmp_path / "t.npz")
    assert loaded.provenance["import"]["orientation"] == "teacher"
    reference = Pi2Network(tuple(DenseLayer(np.ascontiguousarray(m.weight.detach().numpy().T, np.float64), k)
                                 for m, k in zip(model, (2, 3))), (6,))
    x = np.random.default_rng(2).normal(size=(5, 6))
    np.testing.assert_array_equal(loaded.scores(x), reference.scores(x))  # float32 weights survive the file exactly
    np.testing.assert_array_equal(net.scores(x), reference.scores(x))

"""State_dicts to π² networks: orientation inference, LeNet-5, names, biases; real torch files."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from testbed.errors import ImportFormatError
from testbed.model.network import ConvLayer, DenseLayer, Pi2Network
from testbed.model.torch_checkpoint import read_state_dict
from testbed.model.torch_import import network_from_state_dict


def rand(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).normal(0, 1, shape).astype(np.float32)


def mlp_weights(sizes=(12, 8, 5)):
    """In×out weights of an MLP (the π² orientation)."""
    return [rand(n, m, seed=i) for i, (n, m) in enumerate(zip(sizes, sizes[1:]))]


def f64(w):
    # C order: the model's sums follow memory layout, so a transposed view could differ in the last bit
    return np.ascontiguousarray(w, dtype=np.float64)


def reference_mlp(weights, k):
    return Pi2Network(tuple(DenseLayer(f64(w), kk) for w, kk in zip(weights, k)), (weights[0].shape[0],))


def lenet_weights():
    convs = [rand(6, 1, 5, 5, seed=1), rand(16, 6, 5, 5, seed=2)]
    dense = [rand(400, 120, seed=3), rand(120, 84, seed=4), rand(84, 10, seed=5)]  # in×out
    return convs, dense


def reference_lenet(convs, dense, k):
    c1 = ConvLayer(f64(convs[0]), k[0], (1, 28, 28), 1, 2, 2)
    c2 = ConvLayer(f64(convs[1]), k[1], c1.out_shape, 1, 0, 2)
    layers = (c1, c2, *(DenseLayer(f64(w), kk) for w, kk in zip(dense, k[2:])))
    return Pi2Network(layers, (1, 28, 28))


def assert_same_scores(a, b, x):
    np.testing.assert_array_equal(a.scores(x), b.scores(x))


@pytest.mark.parametrize("orientation", ["auto", "teacher"])
def test_teacher_mlp(orientation):
    weights = mlp_weights()
    state = OrderedDict((f"fc{i + 1}.weight", w.T.copy()) for i, w in enumerate(weights))  # nn.Linear: out×in
    net = network_from_state_dict(state, [3, 4], orientation=orientation)
    x = np.random.default_rng(1).normal(size=(6, 12))
    assert_same_scores(net, reference_mlp(weights, [3, 4]), x)
    assert net.provenance["import"] == {"source": "state_dict", "arch": "mlp", "orientation": "teacher",
                                        "layers": ["fc1", "fc2"]}


def test_student_mlp_inferred():
    weights = mlp_weights((12, 8, 5))
    state = {f"layers.{i}.weight": w for i, w in enumerate(weights)}
    net = network_from_state_dict(state, [2, 9])
    assert net.provenance["import"]["orientation"] == "student"
    assert_same_scores(net, reference_mlp(weights, [2, 9]), np.random.default_rng(2).normal(size=(6, 12)))


@pytest.mark.parametrize("prefix", ["module.", "model.", "module.model."])
def test_wrapper_prefixes_and_zero_biases(prefix):
    weights = mlp_weights()
    state = {}
    for i, w in enumerate(weights):
        state[f"{prefix}fc{i}.weight"] = w.T.copy()
        state[f"{prefix}fc{i}.bias"] = np.zeros(w.shape[1], np.float32)
    net = network_from_state_dict(state, [1, 1])
    assert net.provenance["import"]["layers"] == ["fc0", "fc1"]
    assert_same_scores(net, reference_mlp(weights, [1, 1]), np.random.default_rng(3).normal(size=(4, 12)))


@pytest.mark.parametrize("shapes", [[(6, 6), (6, 6)], [(10, 64)], [(8, 4), (4, 8)]])
def test_ambiguous_orientation_needs_the_flag(shapes):
    state = {f"fc{i}.weight": rand(*s, seed=i) for i, s in enumerate(shapes)}
    with pytest.raises(ImportFormatError, match="chain both as teacher .* --orientation teacher|student"):
        network_from_state_dict(state, [1] * len(shapes))
    student = network_from_state_dict(state, [1] * len(shapes), orientation="student")
    teacher = network_from_state_dict(state, [1] * len(shapes), orientation="teacher")
    np.testing.assert_array_equal(student.layers[0].weight, state["fc0.weight"])
    np.testing.assert_array_equal(teacher.layers[0].weight, state["fc0.weight"].T)


def test_shapes_that_do_not_chain():
    state = {"fc1.weight": rand(8, 12), "fc2.weight": rand(7, 9)}
    with pytest.raises(ImportFormatError, match=r"chain neither as teacher \(out×in\) nor as student"):
        network_from_state_dict(state, [1, 1])
    with pytest.raises(ImportFormatError, match="do not chain as student"):
        network_from_state_dict({"fc1.weight": rand(8, 12), "fc2.weight": rand(5, 8)}, [1, 1], orientation="student")


@pytest.mark.parametrize("orientation", ["teacher", "student"])
def test_lenet5(orientation):
    convs, dense = lenet_weights()
    names = ["conv1", "conv2", "fc1", "fc2", "fc3"]
    tensors = convs + [w if orientation == "student" else w.T.copy() for w in dense]
    state = OrderedDict((f"{n}.weight", t) for n, t in zip(names, tensors))
    k = [12, 50, 85, 25, 75]
    net = network_from_state_dict(state, k)  # arch and orientation inferred
    assert net.provenance["import"]["arch"] == "lenet5"
    assert net.provenance["import"]["orientation"] == orientation
    x = np.random.default_rng(4).uniform(0, 1, (2, 1, 28, 28))
    assert_same_scores(net, reference_lenet(convs, dense, k), x)


@pytest.mark.parametrize("state,k,arch,match", [
    ({"fc1.weight": rand(8, 12), "fc1.bias": np.ones(8, np.float32), "fc2.weight": rand(5, 8)}, [1, 1], None,
     "'fc1.bias' is a non-zero bias, but π² layers have no biases"),
    ({"fc1.weight": rand(8, 12), "bn.running_mean": rand(8)}, [1], None, "'bn.running_mean' is neither a weight"),
    ({"fc1.bias": rand(8) * 0}, [1], None, "no '<name>.weight' entries"),
    ({"fc1.weight": rand(8, 12), "fc2.weight": rand(5, 8)}, [1], None, r"2 weight tensors \(fc1, fc2\) need 2 K values"),
    ({"fc1.weight": rand(8, 12), "fc2.weight": rand(5, 8)}, [25, 1], None,
     "layer 'fc1' has 24 arrivals per neuron .* 1..24, got 25"),
    ({"fc1.weight": rand(8, 12), "fc2.weight": rand(5, 8)}, [1, 0], None, "layer 'fc2' .* got 0"),
    ({"fc1.weight": np.full((8, 12), np.nan, np.float32)}, [1], None, "'fc1.weight' must hold finite floats"),
    ({"fc1.weight": rand(8, 12)}, [1], "resnet", "architecture 'resnet' is unknown"),
    ({"c.weight": rand(6, 1, 5, 5), "fc1.weight": rand(8, 12)}, [1, 1], "mlp", r"mlp needs 2-D weights; \['c'\]"),
    ({"fc1.weight": rand(8, 12)}, [1], "lenet5", "lenet5 needs 2 conv"),
    ({"c1.weight": rand(6, 1, 3, 3), "c2.weight": rand(16, 6, 5, 5), "f1.weight": rand(120, 400),
      "f2.weight": rand(84, 120), "f3.weight": rand(10, 84)}, [1] * 5, None, r"conv 'c1' has shape \(6, 1, 3, 3\)"),
    ({"c1.weight": rand(6, 1, 5, 5), "c2.weight": rand(16, 6, 5, 5), "f1.weight": rand(120, 300),
      "f2.weight": rand(84, 120), "f3.weight": rand(10, 84)}, [1] * 5, None, r"linear 'f1' has shape \(120, 300\)"),
])
def test_errors(state, k, arch, match):
    with pytest.raises(ImportFormatError, match=match) as err:
        network_from_state_dict(state, k, arch)
    assert "\n" not in str(err.value)


def test_unknown_orientation():
    with pytest.raises(ImportFormatError, match="orientation 'sideways' is unknown"):
        network_from_state_dict({"fc.weight": rand(3, 4)}, [1], orientation="sideways")


@pytest.mark.torch
@pytest.mark.parametrize("bias", [False, True])
def test_real_torch_teacher_mlp(tmp_path, bias):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 16, bias=bias), torch.nn.ReLU(), torch.nn.Linear(16, 4, bias=bias))
    torch.save(model.state_dict(), tmp_path / "teacher.pt")
    state = read_state_dict(tmp_path / "teacher.pt")
    if bias:
        with pytest.raises(ImportFormatError, match="'0.bias' is a non-zero bias"):
            network_from_state_dict(state, [4, 6])
        return
    net = network_from_state_dict(state, [4, 6], where=str(tmp_path / "teacher.pt"))
    weights = [model[0].weight.detach().numpy().T, model[2].weight.detach().numpy().T]
    x = np.random.default_rng(5).normal(size=(8, 20))
    assert_same_scores(net, reference_mlp(weights, [4, 6]), x)


class _Student:
    """Builds a π²-student-style torch module: parameters named weight, kept in×out."""

    @staticmethod
    def make(torch, shapes):
        module = torch.nn.Module()
        module.layers = torch.nn.ModuleList()
        for shape in shapes:
            layer = torch.nn.Module()
            layer.weight = torch.nn.Parameter(torch.randn(*shape))
            module.layers.append(layer)
        return module


@pytest.mark.torch
def test_real_torch_student_mlp(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    student = _Student.make(torch, [(20, 16), (16, 4)])
    torch.save({"model_state_dict": student.state_dict(), "epoch": 3}, tmp_path / "student.pt")
    net = network_from_state_dict(read_state_dict(tmp_path / "student.pt"), [3, 5])
    assert net.provenance["import"]["orientation"] == "student"
    weights = [layer.weight.detach().numpy() for layer in student.layers]
    assert_same_scores(net, reference_mlp(weights, [3, 5]), np.random.default_rng(6).normal(size=(8, 20)))


@pytest.mark.torch
@pytest.mark.parametrize("orientation", ["teacher", "student"])
def test_real_torch_lenet5(tmp_path, orientation):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(2)
    model = nn.Module()
    model.conv1 = nn.Conv2d(1, 6, 5, padding=2, bias=False)
    model.conv2 = nn.Conv2d(6, 16, 5, bias=False)
    if orientation == "teacher":
        model.fc1, model.fc2, model.fc3 = nn.Linear(400, 120, bias=False), nn.Linear(120, 84, bias=False), nn.Linear(84, 10, bias=False)
    else:
        for name, shape in (("fc1", (400, 120)), ("fc2", (120, 84)), ("fc3", (84, 10))):
            layer = nn.Module()
            layer.weight = nn.Parameter(torch.randn(*shape) * 0.1)
            setattr(model, name, layer)
    torch.save(nn.DataParallel(model).state_dict(), tmp_path / "lenet.pt")  # keys carry "module."
    k = [12, 50, 85, 25, 75]
    net = network_from_state_dict(read_state_dict(tmp_path / "lenet.pt"), k)
    assert net.provenance["import"]["orientation"] == orientation
    dense = [getattr(model, n).weight.detach().numpy() for n in ("fc1", "fc2", "fc3")]
    dense = dense if orientation == "student" else [w.T for w in dense]
    convs = [model.conv1.weight.detach().numpy(), model.conv2.weight.detach().numpy()]
    x = np.random.default_rng(7).uniform(0, 1, (2, 1, 28, 28))
    assert_same_scores(net, reference_lenet(convs, dense, k), x)

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
    assert net.provenance["import"] == {"source": "state_dict", "arch": "mlp", "layout": "torch",
                                        "orientation": "teacher", "constants": "uniform", "layers": ["fc1", "fc2"],
                                        "beyond_c": 0}


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
    ({"fc1.weight": rand(8, 12), "bn.running_mean": rand(8), "bn.running_var": rand(8) ** 2}, [1], "mlp",
     "'bn.running_mean' is neither a weight nor a bias; mlp networks hold only conv/linear weights"),
    ({"fc1.weight": rand(8, 12), "bn.running_mean": rand(8)}, [1], None, "BatchNorm 'bn' needs 1-D running_mean and running_var"),
    ({"fc1.weight": rand(8, 12), "bn.running_var": -rand(8) ** 2, "bn.running_mean": rand(8)}, [1], None,
     "BatchNorm 'bn' has a negative running_var"),
    ({"fc1.weight": rand(8, 12), "fc1.scale": rand(8)}, [1], None, "'fc1.scale' is neither a weight nor a bias"),
    ({"fc1.weight": rand(8, 12, 2)}, [1], None, r"'fc1.weight' has shape \(8, 12, 2\); expected a 2-D linear"),
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


# ---- the authors' layouts, written with torch, against a torch forward written from their description ----

def _param(torch, array):
    return torch.nn.Parameter(torch.as_tensor(array))


def _holder(torch, **arrays):
    """A bare module whose parameters are `arrays` (names as keys: e.g. weight)."""
    module = torch.nn.Module()
    for name, array in arrays.items():
        setattr(module, name, _param(torch, array))
    return module


def _pi2_conv_module(torch, weight_2d):
    """temp_conv_k_opt's layout: the weight sits at <name>.cnn.weight, (k·k·Cin)×Cout."""
    module = torch.nn.Module()
    module.cnn = _holder(torch, weight=weight_2d)
    return module


def _ref_times(torch, x, w, k):
    """(T⁺, T⁻) of a π²_K dense layer from pi2-model.md: x (B, n), w (n, m) in×out."""
    t_plus, t_minus = torch.relu(3 + x)[:, :, None], torch.relu(3 - x)[:, :, None]
    d_plus = torch.clamp(w, -3, 3) + 3
    d_minus = 6 - d_plus
    z_plus = torch.cat([t_plus + d_plus, t_minus + d_minus], dim=1)
    z_minus = torch.cat([t_plus + d_minus, t_minus + d_plus], dim=1)
    earliest = [torch.topk(z, k, dim=1, largest=False).values.mean(dim=1) for z in (z_plus, z_minus)]
    return earliest[0], earliest[1]


def _ref_y_dense(torch, x, w, k):
    t_plus, t_minus = _ref_times(torch, x, w, k)
    return t_plus - t_minus


def _ref_y_conv(torch, x, w_2d, k, kernel, padding):
    """A π² convolution as the issue describes temp_conv_k_opt: F.unfold patches (channel, row,
    column) through the dense neuron, output reshaped (B, H, W, C) and then to (B, C, H, W)."""
    batch, _, h, w = x.shape
    patches = torch.nn.functional.unfold(x, kernel, padding=padding).transpose(1, 2)  # (B, L, Cin·k·k)
    y = _ref_y_dense(torch, patches.reshape(-1, patches.shape[-1]), w_2d, k)
    ho, wo = h + 2 * padding - kernel + 1, w + 2 * padding - kernel + 1
    return y.reshape(batch, ho, wo, -1).permute(0, 3, 1, 2)


def _authors_lenet(rng, fan_in=256):
    """Weights of an authors'-layout LeNet5_K student: conv (k·k·Cin)×Cout, dense in×out."""
    shapes = [(25, 6), (150, 16), (fan_in, 120), (120, 84), (84, 10)]
    return [np.clip(rng.normal(0, 1.0, s), -2.9, 2.9).astype(np.float32) for s in shapes]


def _ref_lenet5_k(torch, x, weights, k):
    """LeNet5_K's forward (the issue's description): ReLU(−1·y) after conv1, ReLU(−10·y) after the
    rest, 2×2 max-pooling after each conv, channel-major flatten, class scores ReLU(−10·y)."""
    F = torch.nn.functional
    w = [torch.as_tensor(a, dtype=torch.float64) for a in weights]
    h = F.max_pool2d(torch.relu(-1 * _ref_y_conv(torch, x, w[0], k[0], 5, 0)), 2)
    h = F.max_pool2d(torch.relu(-10 * _ref_y_conv(torch, h, w[1], k[1], 5, 0)), 2)
    h = h.reshape(len(h), -1)
    h = torch.relu(-10 * _ref_y_dense(torch, h, w[2], k[2]))
    h = torch.relu(-10 * _ref_y_dense(torch, h, w[3], k[3]))
    return torch.relu(-10 * _ref_y_dense(torch, h, w[4], k[4]))


@pytest.mark.torch
def test_real_torch_authors_lenet5_student(tmp_path):
    torch = pytest.importorskip("torch")
    weights = _authors_lenet(np.random.default_rng(11))
    model = torch.nn.Module()
    model.conv1, model.conv2 = _pi2_conv_module(torch, weights[0]), _pi2_conv_module(torch, weights[1])
    model.pool = torch.nn.MaxPool2d(2)
    model.fc1, model.fc2, model.fc3 = (_holder(torch, weight=w) for w in weights[2:])
    model.dropout = torch.nn.Dropout(0.2)
    torch.save(model.state_dict(), tmp_path / "fmnist_pi2_student.pt")
    k = [12, 50, 85, 25, 75]
    net = network_from_state_dict(read_state_dict(tmp_path / "fmnist_pi2_student.pt"), k)
    assert net.provenance["import"] | {"source": None} == {
        "source": None, "arch": "lenet5", "layout": "pi2", "orientation": "student", "constants": "authors",
        "layers": ["conv1", "conv2", "fc1", "fc2", "fc3"], "beyond_c": 0}
    assert net.scales == (1.0, 10.0, 10.0, 10.0, 10.0) and net.rectified and net.layers[0].padding == 0
    x = np.random.default_rng(12).integers(0, 256, (6, 1, 28, 28)) / 255.0  # pixels/255, no normalisation
    expected = _ref_lenet5_k(torch, torch.as_tensor(x), weights, k).numpy()
    scores = net.scores(x)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    assert (scores > 0).any() and (scores == 0).any()  # rectified: some classes tie at zero
    np.testing.assert_array_equal(net.predict(x), torch.as_tensor(expected).argmax(dim=1).numpy())


@pytest.mark.torch
def test_authors_lenet5_ties_at_zero_take_the_first_class(tmp_path):
    torch = pytest.importorskip("torch")
    weights = _authors_lenet(np.random.default_rng(13))
    weights[4] = -np.abs(weights[4])  # fc3's weights ≤ 0 on inputs ≥ 0: y ≥ 0, so every score ReLU(−10·y) is 0
    state = {"conv1.cnn.weight": weights[0], "conv2.cnn.weight": weights[1],
             **{f"fc{i}.weight": w for i, w in enumerate(weights[2:], start=1)}}
    net = network_from_state_dict(state, [12, 50, 85, 25, 75])
    x = np.random.default_rng(14).integers(0, 256, (4, 1, 28, 28)) / 255.0
    expected = _ref_lenet5_k(torch, torch.as_tensor(x), weights, [12, 50, 85, 25, 75])
    assert (net.scores(x) == 0).all() and (expected == 0).all()
    assert net.predict(x).tolist() == expected.argmax(dim=1).tolist() == [0] * 4


@pytest.mark.torch
def test_authors_lenet5_teacher_imports_as_the_student_it_initialises(tmp_path):
    # the authors copy the teacher into the student as weight.view(Cout, −1).T (conv) and .T (dense)
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(3)
    teacher = nn.Module()
    teacher.conv1, teacher.conv2 = nn.Conv2d(1, 6, 5, bias=False), nn.Conv2d(6, 16, 5, bias=False)
    teacher.pool = nn.MaxPool2d(2)
    teacher.fc1, teacher.fc2 = nn.Linear(256, 120, bias=False), nn.Linear(120, 84, bias=False)
    teacher.fc3 = nn.Linear(84, 10, bias=False)
    torch.save(teacher.state_dict(), tmp_path / "fmnist_lenet5.pt")
    state = read_state_dict(tmp_path / "fmnist_lenet5.pt")
    k = [12, 50, 85, 25, 75]
    uniform = network_from_state_dict(state, k)
    assert uniform.provenance["import"]["constants"] == "uniform" and uniform.uniform
    authors = network_from_state_dict(state, k, scales="authors")
    copied = [p.detach().numpy().reshape(p.shape[0], -1).T.copy() for p in teacher.parameters()]
    x = np.random.default_rng(15).uniform(0, 1, (3, 1, 28, 28))
    np.testing.assert_allclose(authors.scores(x), _ref_lenet5_k(torch, torch.as_tensor(x), copied, k).numpy(),
                               rtol=0, atol=1e-6)


RESNET_WIDTHS = (4, 6, 6, 6, 8, 8, 8, 8)  # narrow, so the test runs in seconds; the import reads widths from the weights


def _authors_resnet(rng, classes=10, score_bn=False):
    """Arrays of an authors'-layout ResNet-9 student: 8 π² convs (9·Cin)×Cout with BatchNorms, a dense 8×classes."""
    convs, bns, c_in = [], [], 3
    for c_out in RESNET_WIDTHS:
        convs.append(np.clip(rng.normal(0, 0.8, (9 * c_in, c_out)), -2.9, 2.9).astype(np.float32))
        bns.append({"weight": rng.uniform(0.5, 1.5, c_out), "bias": rng.normal(0, 0.3, c_out),
                    "running_mean": rng.normal(0, 0.5, c_out), "running_var": rng.uniform(0.5, 2, c_out)})
        c_in = c_out
    dense = np.clip(rng.normal(0, 1, (c_in, classes)), -2.9, 2.9).astype(np.float32)
    score = ({"weight": rng.uniform(0.5, 1.5, classes), "bias": rng.normal(0, 0.3, classes),
              "running_mean": rng.normal(0, 0.5, classes), "running_var": rng.uniform(0.5, 2, classes)}
             if score_bn else None)
    return convs, bns, dense, score


CONV_NAMES = [("c1", "conv1"), ("c2", "conv2"), ("res11", "res12"), ("res21", "res22"), ("c3", "conv3"),
              ("c4", "conv4"), ("res211", "res212"), ("res221", "res222")]


def _batchnorm(torch, stats, dims=2):
    bn = (torch.nn.BatchNorm2d if dims == 2 else torch.nn.BatchNorm1d)(len(stats["weight"])).double()
    with torch.no_grad():
        for name, value in stats.items():
            getattr(bn, name).copy_(torch.as_tensor(value))
    return bn.eval()


def _ref_resnet9(torch, x, convs, bns, dense, k, score=None):
    """The authors' ResNet-9 student from its description: π² conv → BatchNorm → ReLU (→ pool), with
    residual additions after res21 and res221. ResNet9_100_temp1 (no score BatchNorm) feeds −1·y
    to each BatchNorm and scores −10·y; ResNet9_100 feeds +y and scores BatchNorm(y)."""
    F = torch.nn.functional
    sign = 1 if score is not None else -1
    w = [torch.as_tensor(a, dtype=torch.float64) for a in convs]
    block = lambda i, h: torch.relu(_batchnorm(torch, bns[i])(sign * _ref_y_conv(torch, h, w[i], k[i], 3, 1)))
    out = block(0, x)
    out = F.max_pool2d(block(1, out), 2)
    out1 = block(2, out)
    out = block(3, out1) + out
    out = F.max_pool2d(block(4, out), 2)
    out = F.max_pool2d(block(5, out), 2)
    out1 = block(6, out)
    out = block(7, out1) + out
    out = F.max_pool2d(out, 4).flatten(1)
    y = _ref_y_dense(torch, out, torch.as_tensor(dense, dtype=torch.float64), k[8])
    return -10 * y if score is None else _batchnorm(torch, score, dims=1)(y)


def _resnet_student(torch, convs, bns, dense, score):
    """A module with ResNet9_100_temp1's (or, with `score`, ResNet9_100's) parameter names."""
    nn = torch.nn
    model = nn.Module()
    for (conv_name, bn_name), w, stats in zip(CONV_NAMES, convs, bns):
        setattr(model, conv_name, _pi2_conv_module(torch, w))
        setattr(model, bn_name, nn.Sequential(_batchnorm(torch, stats), nn.ReLU()))
    if score is not None:
        model.bn = _batchnorm(torch, score, dims=1)
    model.classifier = nn.Sequential(nn.MaxPool2d(4), nn.Flatten(), _holder(torch, weight=dense))
    return model


@pytest.mark.torch
@pytest.mark.parametrize("score_bn", [False, True], ids=["ResNet9_100_temp1", "ResNet9_100"])
def test_real_torch_authors_resnet9_student(tmp_path, score_bn):
    torch = pytest.importorskip("torch")
    convs, bns, dense, score = _authors_resnet(np.random.default_rng(21), score_bn=score_bn)
    torch.save(_resnet_student(torch, convs, bns, dense, score).state_dict(), tmp_path / "ResNet9_cifar10_k.pt")
    k = [16, 50, 35, 35, 60, 70, 80, 100, 10]
    net = network_from_state_dict(read_state_dict(tmp_path / "ResNet9_cifar10_k.pt"), k)
    info = net.provenance["import"]
    assert (info["arch"], info["layout"], info["constants"]) == ("resnet9", "pi2", "authors")
    assert [layer.residual for layer in net.layers] == [None, None, None, 2, None, None, None, 6, None]
    x = np.random.default_rng(22).normal(0, 1, (3, 3, 32, 32))  # normalised CIFAR-like inputs
    expected = _ref_resnet9(torch, torch.as_tensor(x), convs, bns, dense, k, score).detach().numpy()
    np.testing.assert_allclose(net.scores(x), expected, rtol=0, atol=1e-6)
    assert np.ptp(expected, axis=1).min() > 1e-3  # the scores do differ between classes


@pytest.mark.torch
def test_real_torch_authors_resnet9_teacher(tmp_path):
    # conv_block: Conv2d(3×3, padding 1, no bias), BatchNorm, ReLU; keys conv1.0.weight, conv1.1.*
    torch = pytest.importorskip("torch")
    nn = torch.nn
    convs, bns, dense, _ = _authors_resnet(np.random.default_rng(23), classes=100)
    teacher, c_in = nn.Module(), 3
    names = ["conv1", "conv2", "res11", "res22", "conv3", "conv4", "res211", "res222"]
    for name, w, stats in zip(names, convs, bns):
        conv = nn.Conv2d(c_in, w.shape[1], 3, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.as_tensor(w.T.reshape(w.shape[1], c_in, 3, 3)))
        setattr(teacher, name, nn.Sequential(conv, _batchnorm(torch, stats), nn.ReLU()))
        c_in = w.shape[1]
    linear = nn.Linear(c_in, 100, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(dense.T))
    teacher.classifier = nn.Sequential(nn.MaxPool2d(4), nn.Flatten(), linear)
    torch.save(teacher.state_dict(), tmp_path / "ResNet9_cifar100.pt")
    k = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    net = network_from_state_dict(read_state_dict(tmp_path / "ResNet9_cifar100.pt"), k)
    assert net.provenance["import"]["orientation"] == "teacher" and net.n_classes == 100
    x = np.random.default_rng(24).normal(0, 1, (2, 3, 32, 32))
    expected = _ref_resnet9(torch, torch.as_tensor(x), convs, bns, dense, k).detach().numpy()
    np.testing.assert_allclose(net.scores(x), expected, rtol=0, atol=1e-6)


def _resnet_state(score_bn=False):
    convs, bns, dense, score = _authors_resnet(np.random.default_rng(25), score_bn=score_bn)
    state = {}
    for (conv_name, bn_name), w, stats in zip(CONV_NAMES, convs, bns):
        state[f"{conv_name}.cnn.weight"] = w
        state.update({f"{bn_name}.0.{leaf}": np.asarray(v, np.float32) for leaf, v in stats.items()})
    state["classifier.2.weight"] = dense
    return state


def _without(state, key):
    return {name: value for name, value in state.items() if name != key}


def _with(state, key, value):
    return {**state, key: value}


@pytest.mark.parametrize("make, k, kwargs, match", [
    (lambda: _resnet_state(), [1] * 9, {"scales": "uniform"}, "resnet9 is imported with the authors' constants only"),
    (lambda: _resnet_state(), [1] * 8, {}, r"9 weight tensors \(c1, c2, .*\) need 9 K values"),
    (lambda: _without(_resnet_state(), "res22.0.running_mean"), [1] * 9, {},
     "BatchNorm 'res22.0' needs 1-D running_mean and running_var"),
    (lambda: {name: v for name, v in _resnet_state().items() if not name.startswith("conv4.0.")}, [1] * 9, {},
     r"resnet9 needs 8 \(convolution, BatchNorm\) pairs"),
    (lambda: _with(_resnet_state(), "c2.cnn.weight", np.zeros((30, 6), np.float32)), [1] * 9, {},
     r"π² conv 'c2.cnn.weight' has shape \(30, 6\); its rows must be 4·3·3 = 36"),
    (lambda: _with(_resnet_state(), "res21.cnn.weight", np.zeros((54, 5), np.float32)), [1] * 9, {},
     "BatchNorm 'res22.0' has 6 channels; the layer before it has 5"),
    (lambda: _with(_resnet_state(), "classifier.2.weight", np.zeros((9, 10), np.float32)), [1] * 9, {},
     r"chain neither as teacher \(out×in\) nor as student \(in×out\) from 8 inputs"),
    (lambda: _resnet_state(), [1, 1, 1, 1, 1, 1, 1, 1, 17], {}, "layer 'classifier.2' has 16 arrivals .* got 17"),
    (lambda: _resnet_state(), [1] * 9, {"scales": "mine"}, r"constants 'mine' are unknown; expected one of \['auto'"),
    (lambda: {"conv1.cnn.weight": np.zeros((24, 6), np.float32), "conv2.cnn.weight": np.zeros((150, 16), np.float32),
              "fc1.weight": np.zeros((256, 120), np.float32), "fc2.weight": np.zeros((120, 84), np.float32),
              "fc3.weight": np.zeros((84, 10), np.float32)}, [1] * 5, {},
     r"π² conv 'conv1.cnn.weight' has shape \(24, 6\); its rows must be 1·5·5 = 25"),
])
def test_authors_layout_errors(make, k, kwargs, match):
    with pytest.raises(ImportFormatError, match=match) as err:
        network_from_state_dict(make(), k, **kwargs)
    assert "\n" not in str(err.value)


def test_weights_beyond_c_are_counted():
    state = {"fc1.weight": np.array([[4.0, 0.5], [-3.5, 1.0]], np.float32), "fc2.weight": np.ones((2, 3), np.float32)}
    assert network_from_state_dict(state, [1, 1], orientation="student").provenance["import"]["beyond_c"] == 2

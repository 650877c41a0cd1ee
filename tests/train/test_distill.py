"""Distillation: the loss, teacher → student weight copy, and a short real digits run."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from testbed.model.netfile import load_network, save_network
from testbed.train.arch import parse_arch
from testbed.train.datasets import load_dataset
from testbed.train.evaluate import EvalConfig, evaluate_network
from testbed.model.network import DenseLayer, Pi2Network
from testbed.train.recipe import TrainConfig, range_scale, train_network
from testbed.train.schedule import Schedule

torch = pytest.importorskip("torch")
from testbed.errors import TrainingError  # noqa: E402
from testbed.train.distill import DistillConfig, calibrated_logit_scale, distill, distillation_loss  # noqa: E402
from testbed.train.pi2_torch import Pi2TorchNetwork  # noqa: E402
from testbed.train.teacher import build_teacher, student_template  # noqa: E402

pytestmark = pytest.mark.torch


def test_distillation_loss_is_the_spec_formula():
    torch.manual_seed(0)
    zs, zt = torch.randn(6, 10, dtype=torch.float64), torch.randn(6, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    p_t, p_s = torch.softmax(zt / 5, 1), torch.softmax(zs / 5, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    ce = -torch.log_softmax(zs, 1)[torch.arange(6), y].mean()
    expected = 0.5 * 25 * kl + 0.5 * ce
    assert torch.allclose(distillation_loss(zs, zt, y, 5.0, 0.5), expected, atol=1e-12)
    assert torch.allclose(distillation_loss(zt, zt, y, 5.0, 0.3), 0.7 * torch.nn.functional.cross_entropy(zt, y))


def test_student_copies_teacher_weights_in_pi2_orientation():
    teacher = build_teacher(parse_arch("mlp:64-16-10"))
    net = student_template(teacher, parse_arch("mlp:64-16-10"), (2, 3))
    assert net.k == (2, 3) and net.input_shape == (64,)
    np.testing.assert_array_equal(net.layers[0].weight, teacher[1].weight.detach().numpy().T)  # out×in → in×out
    np.testing.assert_array_equal(net.layers[1].weight, teacher[3].weight.detach().numpy().T)


def test_lenet5_student_topology():
    teacher = build_teacher(parse_arch("lenet5"))
    net = student_template(teacher, parse_arch("lenet5"), (12, 50, 85, 25, 75))
    assert [layer.out_shape for layer in net.layers] == [(6, 14, 14), (16, 5, 5), (120,), (84,), (10,)]
    assert [getattr(layer, "pool", None) for layer in net.layers[:2]] == [2, 2]
    assert net.layers[0].padding == 2
    x = torch.rand(2, 1, 28, 28)
    assert teacher(x).shape == (2, 10) and net.scores(x.numpy()).shape == (2, 10)


def test_short_digits_run_distils_and_quantises(tmp_path):
    config = TrainConfig("digits", "mlp:64-16-10", "16,8", bits=4, teacher_epochs=40, epochs=12,
                         finetune_epochs=4, seed=0, command="pi2 train (test)")
    started = time.perf_counter()
    net, report = train_network(config)
    assert time.perf_counter() - started < 90
    acc = report["accuracy"]
    assert acc["teacher"] > 90
    assert acc["student"] > 80 and acc["student"] > acc["teacher"] - 5  # chance is 10 %
    assert acc["quantised"] > acc["teacher"] - 6
    # the file holds 4-bit delays, and numpy evaluation of the saved file gives the reported accuracy
    assert net.bits == 4
    steps = (net.layers[0].weight + 3) / (6 / 15)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)
    path = save_network(net, tmp_path / "n.npz")
    result = evaluate_network(load_network(path), EvalConfig())
    assert result["accuracy"] == pytest.approx(acc["quantised"])
    prov = load_network(path).provenance
    alpha = report["range_scale"]  # the n-bit fine-tune ran on inputs and weights scaled by α
    assert alpha > 1 and prov["training"]["range_scale"] == alpha
    assert prov["dataset"] == {"name": "digits", "scale": pytest.approx(alpha / 16), "offset": 0.0}
    assert prov["command"] == "pi2 train (test)" and prov["seed"] == 0 and prov["torch"] == torch.__version__
    assert set(prov["accuracy"]) == {"teacher", "student", "quantised"}


def test_range_scale_keeps_the_float_function():
    # inputs and weights times α: every y times α, so the scores too, and the argmax stays
    rng = np.random.default_rng(0)
    net = Pi2Network((DenseLayer(rng.normal(0, 0.03, (12, 8)), 5), DenseLayer(rng.normal(0, 0.3, (8, 4)), 3)), (12,))
    x = rng.uniform(0, 1, (50, 12))
    alpha = range_scale(net, x)
    assert alpha == pytest.approx(min(3 / np.abs(x).max(), 3 / np.percentile(np.abs(net.layers[0].weight), 99.9)))
    assert alpha * np.abs(net.layers[0].weight).max() < 3  # no outlier here
    assert alpha * np.abs(net.layers[1].weight).max() < 3  # so this network scales exactly
    scaled = replace(net, layers=tuple(replace(l, weight=l.weight * alpha) for l in net.layers))
    hidden = np.maximum(-10 * net.trace(x)[0].y, 0)
    assert alpha * hidden.max() < 3  # no hidden value clips either, so the scaling is exact
    np.testing.assert_allclose(scaled.scores(x * alpha), alpha * net.scores(x), rtol=1e-9, atol=1e-9)
    assert range_scale(scaled, x * alpha) == 1.0  # at its bound: no further scaling


def test_a_lower_range_percentile_maps_a_smaller_weight_to_c():
    weights = np.linspace(-0.5, 0.5, 101).reshape(101, 1)  # |w|: 0, 0.01, 0.01, …, 0.5, 0.5
    net = Pi2Network((DenseLayer(weights, 1),), (101,))
    x = np.full((1, 101), 0.1)  # T0 / max|x| = 30: not the bound
    for percentile in (100, 90, 50):
        assert range_scale(net, x, percentile) == pytest.approx(3 / np.percentile(np.abs(weights), percentile))
    assert range_scale(net, x, 50) > range_scale(net, x, 90) > range_scale(net, x, 100) == pytest.approx(6)


def test_no_rescale_keeps_the_normalisation():
    config = TrainConfig("digits", "mlp:64-8-10", "4,2", bits=4, teacher_epochs=2, epochs=1, finetune_epochs=1,
                         rescale=False, seed=1)
    net, report = train_network(config)
    assert report["range_scale"] == 1.0 and net.provenance["dataset"]["scale"] == 1 / 16


def test_calibrated_logit_scale_gives_the_student_the_teacher_spread():
    torch.manual_seed(0)
    arch = parse_arch("mlp:64-16-10")
    teacher = build_teacher(arch)
    student = Pi2TorchNetwork(student_template(teacher, arch, (24, 8)))
    x = torch.rand(300, 64) * 2
    targets = teacher(x).detach()
    scale = calibrated_logit_scale(student, targets, x)
    assert scale > 0 and scale != pytest.approx(1.0)
    assert float((scale * student(x).detach()).std()) == pytest.approx(float(targets.std()), rel=1e-4)


def test_alpha_zero_trains_on_the_labels_alone():
    """α = 0 (the authors' LeNet5_K recipe): the teacher's logits cannot move the student."""
    arch = parse_arch("mlp:64-16-10")
    x, y = torch.rand(64, 64) * 2, torch.randint(0, 10, (64,))
    weights = []
    for targets in (torch.zeros(64, 10), 5 * torch.randn(64, 10)):
        torch.manual_seed(0)
        student = Pi2TorchNetwork(student_template(build_teacher(arch), arch, (24, 8)))
        start = student.layers[0].weight.detach().clone()
        distill(student, targets, x, y, DistillConfig(2, 1e-2, 16, alpha=0.0, schedule=Schedule("adamax", 0.9)),
                torch.Generator().manual_seed(0))
        assert not torch.equal(student.layers[0].weight, start)  # it trained
        weights.append([layer.weight.detach().clone() for layer in student.layers])
    for a, b in zip(*weights):
        assert torch.equal(a, b)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_logit_scale_is_explained(scale):
    with pytest.raises(TrainingError, match="logit scale"):
        DistillConfig(1, 1e-3, 8, logit_scale=scale)


def test_calibrated_run_records_its_logit_scale():
    config = TrainConfig("digits", "mlp:64-8-10", "4,2", teacher_epochs=3, epochs=1, logit_scale=None, seed=3)
    net, report = train_network(config)
    assert report["logit_scale"] > 0 and report["logit_scale"] != 1.0
    assert net.provenance["training"]["logit_scale"] == report["logit_scale"]
    assert train_network(replace(config, logit_scale=report["logit_scale"]))[1]["accuracy"] == report["accuracy"]


def test_same_seed_same_network():
    config = TrainConfig("digits", "mlp:64-8-10", "4,2", teacher_epochs=3, epochs=2, seed=3)
    a, ra = train_network(config)
    b, rb = train_network(config)
    assert ra["accuracy"] == rb["accuracy"]
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_array_equal(la.weight, lb.weight)


def test_digits_data_feeds_the_mlp_shape():
    data = load_dataset("digits")
    assert data.sample_shape == (64,) and data.n_classes == 10


def test_authors_lenet5k_student_topology_and_constants():
    arch = parse_arch("lenet5k")
    teacher = build_teacher(arch)
    net = student_template(teacher, arch, (12, 50, 85, 25, 75), authors=True)
    assert net.layers[0].padding == 0 and net.layers[2].n_inputs == 256
    assert net.scales == (1.0, 10.0, 10.0, 10.0, 10.0) and net.rectified
    x = torch.rand(3, 1, 28, 28)
    np.testing.assert_allclose(Pi2TorchNetwork(net, torch.float64)(x.double()).detach().numpy(),
                               net.scores(x.numpy()), atol=1e-6)


def test_authors_constants_need_a_lenet():
    with pytest.raises(TrainingError, match="--constants authors are LeNet5_K's"):
        train_network(TrainConfig("digits", "mlp:64-8-10", "4,2", constants="authors"))

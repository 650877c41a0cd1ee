"""Training configuration errors that need no torch: arch/K strings, options, missing torch."""

from __future__ import annotations

import sys

import pytest

from testbed.errors import TrainingError
from testbed.train import require_torch
from testbed.train.arch import parse_arch, parse_k
from testbed.train.recipe import TrainConfig, train_network


def test_parse_arch_and_k():
    arch = parse_arch("mlp:64-16-10")
    assert (arch.input_shape, arch.n_layers, arch.n_classes, str(arch)) == ((64,), 2, 10, "mlp:64-16-10")
    assert parse_k("16,8", arch) == (16, 8)
    assert parse_arch("LeNet5").n_layers == 5


@pytest.mark.parametrize("text", ["mlp", "mlp:64", "cnn:3-4", "mlp:64-x-10"])
def test_bad_arch_is_explained(text):
    with pytest.raises(TrainingError, match="mlp:IN-H1"):
        parse_arch(text)


@pytest.mark.parametrize("text", ["1", "1,1,1", "0,1", "a,b"])
def test_bad_k_is_explained(text):
    with pytest.raises(TrainingError, match="K"):
        parse_k(text, parse_arch("mlp:64-16-10"))


@pytest.mark.parametrize("field, value", [("bits", 0), ("event_loss", 1.0), ("jitter", -0.1), ("threads", 0),
                                          ("logit_scale", 0.0), ("alpha", 1.5), ("optimiser", "sgd"),
                                          ("lr_decay", 0.0), ("range_percentile", 0.0)])
def test_bad_options_are_explained(field, value):
    with pytest.raises(TrainingError):
        TrainConfig("digits", "mlp:64-16-10", "1,1", **{field: value})


def test_arch_must_fit_the_dataset():
    with pytest.raises(TrainingError, match=r"takes \(784,\) inputs but data set digits"):
        train_network(TrainConfig("digits", "mlp:784-10", "1"))


def test_missing_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(TrainingError, match=r"pip install 'pi2-testbed\[train\]' \(torch==2.13.0\)"):
        require_torch()
    with pytest.raises(TrainingError, match="train extra"):
        train_network(TrainConfig("digits", "mlp:64-16-10", "1,1", epochs=1))

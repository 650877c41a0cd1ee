"""`pi2 eval --data-dir`: a ResNet-9 network evaluated on CIFAR batches from the user's directory."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
from click.testing import CliRunner

from testbed.cli import pi2
from testbed.errors import DatasetError
from testbed.model.netfile import load_network, save_network
from testbed.model.torch_import import network_from_state_dict
from testbed.train.datasets import NORMALISATIONS

WIDTHS = (2, 3, 3, 3, 4, 4, 4, 4)  # a narrow ResNet-9: the import reads widths from the weights
NAMES = [("c1", "conv1"), ("c2", "conv2"), ("res11", "res12"), ("res21", "res22"), ("c3", "conv3"),
         ("c4", "conv4"), ("res211", "res212"), ("res221", "res222")]


def resnet9_file(path):
    rng = np.random.default_rng(0)
    state, c_in = {}, 3
    for (conv, bn), c_out in zip(NAMES, WIDTHS):
        state[f"{conv}.cnn.weight"] = rng.normal(0, 0.8, (9 * c_in, c_out)).astype(np.float32)
        state[f"{bn}.0.weight"], state[f"{bn}.0.bias"] = rng.uniform(0.5, 1.5, c_out), rng.normal(0, 0.3, c_out)
        state[f"{bn}.0.running_mean"], state[f"{bn}.0.running_var"] = rng.normal(0, 0.3, c_out), rng.uniform(0.5, 2, c_out)
        c_in = c_out
    state["classifier.2.weight"] = rng.normal(0, 1, (c_in, 10)).astype(np.float32)
    net = network_from_state_dict(state, [4, 6, 6, 6, 8, 8, 8, 8, 3])
    net = replace(net, provenance={**net.provenance, "dataset": {"name": "cifar10", **NORMALISATIONS["cifar10"].record()}})
    return save_network(net, path)


def cifar10_binary(root, n=5):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(1)
    records = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rows = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], axis=1).astype(np.uint8)
        (folder / name).write_bytes(rows.tobytes())
        records[name] = rows
    return records["test_batch.bin"]


def test_eval_resnet9_on_cifar_batches_from_data_dir(tmp_path):
    path = resnet9_file(tmp_path / "resnet9.npz")
    test = cifar10_binary(tmp_path)
    result = CliRunner().invoke(pi2, ["eval", str(path), "--data-dir", str(tmp_path), "--limit", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["dataset"] == "cifar10" and report["samples"] == 4
    net = load_network(path)
    x = NORMALISATIONS["cifar10"].apply(test[:4, 1:].reshape(4, 3, 32, 32))
    assert report["accuracy"] == 100.0 * np.mean(net.predict(x) == test[:4, 0])
    assert report["normalisation"]["scale"] == list(NORMALISATIONS["cifar10"].scale)


def test_eval_without_the_batches_says_where_to_get_them(tmp_path):
    path = resnet9_file(tmp_path / "resnet9.npz")
    result = CliRunner().invoke(pi2, ["eval", str(path), "--data-dir", str(tmp_path / "nothing")])
    assert isinstance(result.exception, DatasetError)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in str(result.exception)

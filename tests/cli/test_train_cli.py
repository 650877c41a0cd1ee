"""`pi2 train`, `pi2 eval` and `pi2 show` through click, and the bundled digits network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import testbed
from testbed.cli import pi2
from testbed.errors import DatasetError, TrainingError
from testbed.model.netfile import load_network
from testbed.train import datasets

BUNDLED = Path(testbed.__file__).parent / "networks" / "digits-mlp.npz"


def test_bundled_network_evaluates_to_its_recorded_accuracy():
    result = CliRunner().invoke(pi2, ["eval", str(BUNDLED), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    recorded = report["recorded_accuracy"]
    assert report["dataset"] == "digits" and report["samples"] == 360 and report["bits"] == 4
    assert report["accuracy"] == pytest.approx(recorded["quantised"], abs=1e-3)
    assert recorded["student"] >= recorded["teacher"] - 0.5  # the acceptance bounds of the bundled network
    assert recorded["quantised"] >= recorded["teacher"] - 1.5
    float_delays = json.loads(CliRunner().invoke(pi2, ["eval", str(BUNDLED), "--bits", "0", "--json"]).output)
    assert float_delays["bits"] is None
    assert float_delays["accuracy"] == report["accuracy"]  # the stored weights already sit on the 4-bit grid


def test_eval_with_perturbations_and_limit():
    result = CliRunner().invoke(pi2, ["eval", str(BUNDLED), "--dataset", "digits", "--limit", "50", "--jitter",
                                      "0.1", "--event-loss", "0.1", "--bits", "3"])
    assert result.exit_code == 0, result.output
    assert "on digits test (50 samples" in result.output and "3-bit delays" in result.output


def test_show_describes_the_bundled_network():
    result = CliRunner().invoke(pi2, ["show", str(BUNDLED), "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert [layer["weight_shape"] for layer in meta["topology"]] == [[64, 16], [16, 10]]
    assert meta["quantisation"] == {"bits": 4}
    assert meta["provenance"]["command"].startswith("pi2 train --dataset digits --arch mlp:64-16-10")
    text = CliRunner().invoke(pi2, ["show", str(BUNDLED)])
    assert text.exit_code == 0 and "4-bit" in text.output and "teacher" in text.output


def test_eval_unknown_split_and_missing_dataset_are_errors(tmp_path, monkeypatch):
    from testbed.train import datasets

    monkeypatch.setattr(datasets, "FASHION_DIR", tmp_path)
    result = CliRunner().invoke(pi2, ["eval", str(BUNDLED), "--dataset", "fashion"])
    assert isinstance(result.exception, DatasetError) and "apt-get install" in str(result.exception)


def test_train_rejects_a_bad_k_before_training(tmp_path):
    result = CliRunner().invoke(pi2, ["train", "--k", "1", "-o", str(tmp_path / "n.npz")])
    assert isinstance(result.exception, TrainingError) and "2 positive integers" in str(result.exception)
    assert not (tmp_path / "n.npz").exists()


@pytest.mark.parametrize("scale", ["0", "-1", "inf", "wide"])
def test_train_rejects_a_bad_logit_scale_before_training(tmp_path, scale):
    result = CliRunner().invoke(pi2, ["train", "--k", "4,2", "--logit-scale", scale, "-o", str(tmp_path / "n.npz")])
    assert result.exit_code == 2 and "neither a finite λ > 0 nor 'auto'" in result.output
    assert not (tmp_path / "n.npz").exists()


@pytest.mark.torch
def test_train_writes_a_network_and_reports_json(tmp_path):
    out = tmp_path / "n.npz"
    result = CliRunner().invoke(pi2, ["train", "--dataset", "digits", "--arch", "mlp:64-8-10", "--k", "4,2",
                                      "--teacher-epochs", "5", "--epochs", "2", "--logit-scale", "0.5", "--seed", "1",
                                      "--bits", "4", "--finetune-epochs", "1", "--finetune-lr", "2e-3", "--optimizer",
                                      "adamax", "--lr-decay", "0.7", "--alpha", "0.2", "--teacher-lr", "4e-3",
                                      "--range-percentile", "99",
                                      "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stderr has a line per epoch (not a terminal)
    assert "distil epoch 2/2" in result.stderr
    assert report["k"] == [4, 2] and report["accuracy"]["quantised"] is not None and out.is_file()
    assert report["logit_scale"] == 0.5
    shown = json.loads(CliRunner().invoke(pi2, ["show", str(out), "--json"]).output)
    assert shown["provenance"]["training"]["logit_scale"] == 0.5
    training = shown["provenance"]["training"]
    assert (training["finetune_lr"], training["optimiser"], training["lr_decay"], training["alpha"],
            training["teacher_lr"], training["range_percentile"]) == (2e-3, "adamax", 0.7, 0.2, 4e-3, 99)
    assert shown["provenance"]["accuracy"]["student"] == pytest.approx(report["accuracy"]["student"], abs=1e-3)


def test_train_lenet5k_and_authors_constants_are_checked_before_training(tmp_path):
    result = CliRunner().invoke(pi2, ["train", "--arch", "lenet5k", "--k", "1,1", "-o", str(tmp_path / "n.npz")])
    assert isinstance(result.exception, TrainingError) and "lenet5k has 5 layers" in str(result.exception)
    result = CliRunner().invoke(pi2, ["train", "--constants", "authors", "--k", "1,1", "-o", str(tmp_path / "n.npz")])
    assert isinstance(result.exception, TrainingError) and "--constants authors are LeNet5_K's" in str(result.exception)


MNIST_BUNDLED = BUNDLED.parent / "mnist-mlp.npz"


@pytest.mark.slow
@pytest.mark.skipif(not (datasets.cache_dir() / "mnist.npz").is_file(), reason="MNIST is not cached (pi2 train "
                    "--dataset mnist fetches it once)")
def test_bundled_mnist_network_evaluates_to_its_recorded_accuracy():
    result = CliRunner().invoke(pi2, ["eval", str(MNIST_BUNDLED), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    recorded = report["recorded_accuracy"]
    assert report["dataset"] == "mnist" and report["samples"] == 10000 and report["bits"] == 4
    assert report["k"] == [140, 16] and report["accuracy"] == pytest.approx(recorded["quantised"], abs=1e-3)
    assert report["normalisation"]["from"] == "network"  # the range scale α lives in the stored normalisation
    assert load_network(MNIST_BUNDLED).uniform  # what the kernel fabric compiles

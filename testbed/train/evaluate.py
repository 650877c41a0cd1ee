"""Accuracy of a saved π² network on a data set, with the numpy model only (no torch).

The network's own normalisation (provenance["dataset"]) turns raw samples into inputs, so a
network is always fed what it was trained on; a network without one gets the data set's default.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from testbed.errors import DatasetError, ModelError
from testbed.model.network import Perturbation, Pi2Network
from testbed.train.datasets import load_dataset, normalisation_of

_BATCH = 500


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate: `bits` None keeps the network's quantisation, 0 means float delays."""

    dataset: str | None = None  # None: the data set named in the network's provenance
    split: str = "test"
    bits: int | None = None
    jitter: float = 0.0
    event_loss: float = 0.0     # fraction of input events lost, each at every neuron (keep = 1 − event_loss)
    limit: int | None = None
    seed: int = 0
    data_dir: Path | None = None  # where CIFAR's batches are (testbed.train.datasets)

    def __post_init__(self) -> None:
        if self.bits is not None and not 0 <= self.bits <= 16:
            raise ModelError(f"--bits must be 0 (float delays) or 1..16, got {self.bits}")
        if self.limit is not None and self.limit < 1:
            raise DatasetError(f"--limit must be ≥ 1 samples, got {self.limit}")
        if not 0 <= self.event_loss < 1:
            raise ModelError(f"--event-loss must be a fraction in [0, 1), got {self.event_loss}")


def numpy_accuracy(net: Pi2Network, x: np.ndarray, y: np.ndarray, perturb: Perturbation | None = None) -> float:
    """Accuracy (%) of `net` on normalised inputs `x`, in batches (batch b draws noise from seed + b)."""
    x = x.reshape(len(x), *net.input_shape)
    hits = 0
    for b, lo in enumerate(range(0, len(x), _BATCH)):
        noise = None if perturb is None else replace(perturb, seed=perturb.seed + b)
        hits += int((net.predict(x[lo:lo + _BATCH], noise) == y[lo:lo + _BATCH]).sum())
    return 100.0 * hits / len(x)


def evaluate_network(net: Pi2Network, config: EvalConfig) -> dict[str, Any]:
    """Accuracy (%) of `net` on a split, with optional bits override, jitter and event loss."""
    stored = net.provenance.get("dataset")
    name = config.dataset
    if name is None:
        if not (isinstance(stored, dict) and isinstance(stored.get("name"), str)):
            raise DatasetError("the network names no data set in its provenance; pass --dataset")
        name = stored["name"]
    dataset = load_dataset(name, config.data_dir)
    norm = normalisation_of(net.provenance, dataset)
    raw, labels = dataset.split(config.split)
    if config.limit is not None:
        raw, labels = raw[:config.limit], labels[:config.limit]
    size = int(np.prod(net.input_shape))
    if int(np.prod(raw.shape[1:])) != size:
        raise DatasetError(f"data set {name} has samples of shape {raw.shape[1:]}; the network takes "
                           f"{tuple(net.input_shape)}")
    if config.bits is not None:
        net = net.with_bits(config.bits or None)
    perturb = (Perturbation(config.jitter, 1.0 - config.event_loss, config.seed)
               if config.jitter or config.event_loss else None)
    return {
        "dataset": name, "split": config.split, "samples": len(labels),
        "accuracy": numpy_accuracy(net, norm.apply(raw), labels, perturb),
        "bits": net.bits, "jitter": config.jitter, "event_loss": config.event_loss, "seed": config.seed, "k": list(net.k),
        "normalisation": {"scale": norm.scale, "offset": norm.offset,
                          "from": "network" if stored is not None else "data set default"},
        "recorded_accuracy": net.provenance.get("accuracy"),
    }

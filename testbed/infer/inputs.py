"""Network inputs from a data set, normalised exactly as the network was trained."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testbed.errors import DatasetError
from testbed.model.network import Pi2Network
from testbed.train.datasets import load_dataset, normalisation_of


@dataclass(frozen=True, eq=False)
class Inputs:
    dataset: str
    split: str
    x: np.ndarray  # (samples, *input_shape), normalised
    y: np.ndarray  # labels


def dataset_name(net: Pi2Network, name: str | None) -> str:
    """`name`, or the data set recorded in the network's provenance."""
    if name is not None:
        return name
    stored = net.provenance.get("dataset")
    if isinstance(stored, dict) and isinstance(stored.get("name"), str):
        return stored["name"]
    raise DatasetError("the network records no data set; pass --dataset (digits, mnist, fashion, mnist1d)")


def network_inputs(net: Pi2Network, name: str | None, split: str = "test", limit: int | None = None) -> Inputs:
    """The first `limit` samples of a split, as the network sees them."""
    data = load_dataset(dataset_name(net, name))
    raw, labels = data.split(split)
    if limit is not None:
        if limit < 1:
            raise DatasetError(f"at least 1 sample is needed, got {limit}")
        raw, labels = raw[:limit], labels[:limit]
    if int(np.prod(raw.shape[1:])) != int(np.prod(net.input_shape)):
        raise DatasetError(f"data set {data.name} has samples of shape {raw.shape[1:]}; the network takes "
                           f"{tuple(net.input_shape)}: pass the data set it was trained on (--dataset)")
    x = normalisation_of(net.provenance, data).apply(raw).reshape((len(raw),) + tuple(net.input_shape))
    return Inputs(data.name, split, x, np.asarray(labels))

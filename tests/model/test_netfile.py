"""Network files: round trip, and one one-line ModelError per kind of bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from testbed.errors import ModelError
from testbed.model.encoding import Constants
from testbed.model.netfile import META_KEY, load_network, network_meta, save_network
from testbed.model.network import Affine, ConvLayer, DenseLayer, Pi2Network


def f32(a):
    return np.asarray(a, dtype=np.float32).astype(np.float64)  # files store float32 weights


def small_net():
    rng = np.random.default_rng(0)
    conv = ConvLayer(f32(rng.normal(size=(2, 1, 3, 3))), 4, (1, 6, 6), 1, 1, 2)
    dense = DenseLayer(f32(rng.normal(size=(18, 4))), 5)
    return Pi2Network((conv, dense), (1, 6, 6), Constants(2.5, 3.0, 8.0), bits=4,
                      provenance={"dataset": {"name": "digits", "scale": 0.1, "offset": 0.0}, "seed": 3})


def test_round_trip_same_scores(tmp_path):
    net = small_net()
    loaded = load_network(save_network(net, tmp_path / "net.npz"))
    x = np.random.default_rng(1).normal(size=(4, 1, 6, 6))
    np.testing.assert_array_equal(loaded.scores(x), net.scores(x))
    assert network_meta(loaded) == network_meta(net)


def test_round_trip_temp_network(tmp_path):
    net = Pi2Network((DenseLayer(f32(np.eye(3)), 2),), (3,), gamma=1.5)
    loaded = load_network(save_network(net, tmp_path / "t.npz"))
    assert loaded.gamma == 1.5
    x = np.random.default_rng(2).normal(size=(3, 3))
    np.testing.assert_array_equal(loaded.scores(x), net.scores(x))


def constants_net():
    """Every optional per-layer constant: s per layer, a folded BatchNorm, a residual, rectified scores."""
    rng = np.random.default_rng(4)
    affine = Affine(rng.normal(size=2), rng.normal(size=2))
    conv0 = ConvLayer(f32(rng.normal(size=(2, 2, 3, 3))), 4, (2, 6, 6), 1, 1, 1, s=1.0, affine=affine)
    conv1 = ConvLayer(f32(rng.normal(size=(2, 2, 3, 3))), 5, (2, 6, 6), 1, 1, 2, residual=0)
    dense = DenseLayer(f32(rng.normal(size=(18, 4))), 5, s=2.5, affine=Affine(np.ones(4) * 2, np.arange(4.0)))
    return Pi2Network((conv0, conv1, dense), (2, 6, 6), rectified=True,
                      provenance={"dataset": {"name": "cifar10", "scale": [0.1, 0.2], "offset": [-1.0, 0.5]}})


def test_round_trip_per_layer_constants(tmp_path):
    net = constants_net()
    loaded = load_network(save_network(net, tmp_path / "net.npz"))
    x = np.random.default_rng(1).normal(size=(5, 2, 6, 6))
    np.testing.assert_array_equal(loaded.scores(x), net.scores(x))
    assert network_meta(loaded) == network_meta(net)
    assert network_meta(net)["scores"] == "rectified"
    assert [layer.get("s") for layer in network_meta(net)["topology"]] == [1.0, None, 2.5]
    np.testing.assert_array_equal(loaded.layers[0].affine.shift, net.layers[0].affine.shift)  # float64 kept


def test_version_1_files_load(tmp_path):
    meta, arrays = parts()
    meta["format_version"] = 1
    net = load_network(write(tmp_path / "v1.npz", meta, arrays))
    assert net.uniform and not net.rectified and net.scales == (8.0, 8.0)


def write(path, meta, arrays):
    np.savez(path, **arrays, **{META_KEY: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)})
    return path


def parts():
    net = small_net()
    return network_meta(net), {f"layer{i}.weight": np.asarray(l.weight, np.float32) for i, l in enumerate(net.layers)}


def drop(d, key):
    del d[key]


def set_layer(i, key, value):
    return lambda meta, arrays: meta["topology"][i].__setitem__(key, value)


CASES = {
    "missing format_version": (lambda m, a: drop(m, "format_version"), "missing field 'format_version'"),
    "missing topology": (lambda m, a: drop(m, "topology"), "missing field 'topology'"),
    "missing constants": (lambda m, a: drop(m, "constants"), "missing field 'constants'"),
    "wrong format": (lambda m, a: m.__setitem__("format", "keras"), "field 'format'"),
    "wrong version": (lambda m, a: m.__setitem__("format_version", 3), "field 'format_version' = 3; this pi2 reads versions 1, 2"),
    "version type": (lambda m, a: m.__setitem__("format_version", "1"), "field 'format_version' = '1'"),
    "input_shape type": (lambda m, a: m.__setitem__("input_shape", "1,6,6"), "field 'input_shape'"),
    "input_shape values": (lambda m, a: m.__setitem__("input_shape", [1, 0, 6]), "field 'input_shape'"),
    "topology type": (lambda m, a: m.__setitem__("topology", {"0": {}}), "field 'topology'"),
    "constants keys": (lambda m, a: m["constants"].pop("s"), "field 'constants'"),
    "constant value": (lambda m, a: m["constants"].__setitem__("t0", -1), "constant t0"),
    "neuron kind": (lambda m, a: m.__setitem__("neuron", {"kind": "lif"}), "field 'neuron'"),
    "quantisation": (lambda m, a: m.__setitem__("quantisation", {"bits": 40}), "field 'quantisation'"),
    "provenance type": (lambda m, a: m.__setitem__("provenance", [1]), "field 'provenance'"),
    "unknown key": (lambda m, a: m.__setitem__("weights", 1), r"unknown field\(s\) \['weights'\]"),
    "unknown layer key": (set_layer(1, "bias", True), r"topology\[1\]: dense layer has keys"),
    "layer type": (set_layer(1, "type", "lstm"), r"topology\[1\]: field 'type' = 'lstm'"),
    "bad K zero": (set_layer(1, "k", 0), r"K must be an integer in 1..36"),
    "bad K too big": (set_layer(0, "k", 19), r"K must be an integer in 1..18"),
    "bad K type": (set_layer(1, "k", "5"), r"topology\[1\]: field 'k' = '5'"),
    "conv stride type": (set_layer(0, "stride", "1"), r"topology\[0\]: field 'stride' = '1'"),
    "conv pool float": (set_layer(0, "pool", 2.0), r"topology\[0\]: field 'pool' = 2.0"),
    "missing array": (lambda m, a: drop(a, "layer1.weight"), r"topology\[1\]: array 'layer1.weight' is missing"),
    "extra array": (lambda m, a: a.__setitem__("layer2.weight", np.zeros((4, 2), np.float32)),
                    r"arrays \['layer2.weight'\] belong to no layer"),
    "non-finite weight": (lambda m, a: a["layer1.weight"].__setitem__((0, 0), np.nan),
                          r"topology\[1\]: array 'layer1.weight' must hold finite floats"),
    "integer weight": (lambda m, a: a.__setitem__("layer1.weight", np.zeros((18, 4), np.int32)),
                       r"topology\[1\]: array 'layer1.weight' must hold finite floats"),
    "shape mismatch": (lambda m, a: a.__setitem__("layer1.weight", np.zeros((17, 4), np.float32)),
                       "layer 1: dense expects 17 inputs, gets 18"),
    # the per-layer output constants of format version 2
    "s zero": (set_layer(1, "s", 0), r"topology\[1\]: field 's' = 0; expected a finite number > 0"),
    "s bool": (set_layer(0, "s", True), r"topology\[0\]: field 's' = True"),
    "s text": (set_layer(0, "s", "10"), r"topology\[0\]: field 's' = '10'"),
    "affine not true": (set_layer(0, "affine", 1), r"topology\[0\]: field 'affine' = 1; expected true"),
    "affine arrays missing": (set_layer(0, "affine", True), r"topology\[0\]: array 'layer0.affine_scale' is missing"),
    "affine channels": (lambda m, a: (set_layer(0, "affine", True)(m, a), a.update(
        {"layer0.affine_scale": np.ones(3), "layer0.affine_shift": np.zeros(3)})),
        r"topology\[0\]: conv layer affine has 3 channels; the layer has 2"),
    "affine non-finite": (lambda m, a: (set_layer(0, "affine", True)(m, a), a.update(
        {"layer0.affine_scale": np.array([1.0, np.inf]), "layer0.affine_shift": np.zeros(2)})),
        r"topology\[0\]: array 'layer0.affine_scale' must hold finite floats"),
    "affine arrays without the key": (lambda m, a: a.update({"layer0.affine_scale": np.ones(2)}),
                                      r"arrays \['layer0.affine_scale'\] belong to no layer"),
    "residual later layer": (set_layer(0, "residual", 1), r"topology\[0\]: field 'residual' = 1; expected the index 0..0"),
    "residual type": (set_layer(1, "residual", "0"), r"topology\[1\]: field 'residual' = '0'"),
    "residual shape": (set_layer(0, "residual", 0), r"layer 0: residual adds the input of layer 0, shape \(1, 6, 6\), "
                                                    r"to an output of shape \(2, 6, 6\)"),
    "residual on the output layer": (set_layer(1, "residual", 1), r"layer 1: residual = 1; expected .* on a hidden layer"),
    "scores": (lambda m, a: m.__setitem__("scores", "softmax"), r"field 'scores' = 'softmax'; expected 'linear' or 'rectified'"),
    "dataset record": (lambda m, a: m["provenance"].__setitem__("dataset", "mnist"), r"field 'provenance.dataset' = 'mnist'"),
    "dataset scale per channel": (lambda m, a: m["provenance"]["dataset"].__setitem__("scale", [0.1, 0.2]),
                                  r"field 'provenance.dataset.scale' = \[0.1, 0.2\]; expected .* one number per input "
                                  r"channel \(1\)"),
    "dataset offset": (lambda m, a: m["provenance"]["dataset"].__setitem__("offset", None),
                       r"field 'provenance.dataset.offset' = None"),
}


@pytest.mark.parametrize("case", CASES)
def test_validation_error(tmp_path, case):
    mutate, match = CASES[case]
    meta, arrays = parts()
    mutate(meta, arrays)
    with pytest.raises(ModelError, match=match) as err:
        load_network(write(tmp_path / "bad.npz", meta, arrays))
    assert "\n" not in str(err.value)


def test_meta_not_json(tmp_path):
    _, arrays = parts()
    np.savez(tmp_path / "bad.npz", **arrays, **{META_KEY: np.frombuffer(b"{not json", dtype=np.uint8)})
    with pytest.raises(ModelError, match="'meta.json' is not valid JSON"):
        load_network(tmp_path / "bad.npz")


def test_missing_meta(tmp_path):
    _, arrays = parts()
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ModelError, match="missing 'meta.json'"):
        load_network(tmp_path / "bad.npz")


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such network file"):
        load_network(tmp_path / "nothing.npz")


def corruptions(data: bytes):
    yield "empty", b""
    yield "garbage", b"not a zip at all" * 8
    yield "truncated", data[: len(data) // 2]
    for offset in range(0, len(data), 7):  # flip every 7th byte in turn: headers, compressed data, directory
        flipped = bytearray(data)
        flipped[offset] ^= 0xFF
        yield f"flip@{offset}", bytes(flipped)


def test_corrupt_zip_is_one_line_model_error(tmp_path):
    good = save_network(small_net(), tmp_path / "good.npz").read_bytes()
    refused = 0
    for name, data in corruptions(good):
        path = tmp_path / "bad.npz"
        path.write_bytes(data)
        try:
            load_network(path)
        except ModelError as exc:
            assert "\n" not in str(exc), name
            refused += 1
    assert refused > 50  # most flips are caught (flips of unused zip header fields load fine)

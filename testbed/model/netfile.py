"""Network files: one ``.npz`` holding the weights and a JSON metadata record.

Arrays are ``layer<i>.weight`` (and ``layer<i>.affine_scale``/``layer<i>.affine_shift`` for a
layer with an affine map); the metadata sits in the array ``meta.json`` (UTF-8 bytes) so the
file loads with ``allow_pickle=False``. Metadata (format_version 2)::

    format            "pi2-network"
    format_version    2 (version 1 files, which have none of the optional fields, load too)
    input_shape       [64] or [1, 28, 28]
    topology          [{"type": "dense", "k": 1}, {"type": "conv", "k": 12, "stride": 1,
                       "padding": 2, "pool": 2}, ...]   (shapes come from the arrays)
                      optional per layer: "s": number > 0 (this layer's s instead of the
                      constant), "affine": true (arrays above), "residual": index of the
                      layer whose input is added (see testbed.model.network)
    constants         {"t0": 3.0, "c": 3.0, "s": 10.0}
    neuron            {"kind": "pi2"} or {"kind": "temp", "gamma": 1.0}
    quantisation      {"bits": 4} or null
    scores            optional: "linear" (the default) or "rectified"
    provenance        {"dataset": {"name", "scale", "offset"}, "accuracy": {...}, "seed", "command", ...}
                      the input normalisation x = raw·scale + offset: scale and offset are
                      numbers, or lists with one number per input channel

Loading validates every field and raises `ModelError` naming the field and what was expected.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from testbed.atomic_file import write_atomic
from testbed.errors import ModelError
from testbed.model.encoding import Constants
from testbed.model.network import Affine, ConvLayer, DenseLayer, Pi2Network

FORMAT = "pi2-network"
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)
OPTIONAL_LAYER_KEYS = {"s", "affine", "residual"}
META_KEY = "meta.json"


def network_meta(net: Pi2Network) -> dict[str, Any]:
    """The JSON metadata record of `net` (everything but the weight arrays)."""
    topology: list[dict[str, Any]] = []
    for layer in net.layers:
        if isinstance(layer, DenseLayer):
            entry: dict[str, Any] = {"type": "dense", "k": int(layer.k)}
        else:
            entry = {"type": "conv", "k": int(layer.k), "stride": layer.stride, "padding": layer.padding,
                     "pool": layer.pool}
        if layer.s is not None:
            entry["s"] = float(layer.s)
        if layer.affine is not None:
            entry["affine"] = True
        if layer.residual is not None:
            entry["residual"] = int(layer.residual)
        topology.append(entry)
    c = net.constants
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "input_shape": list(net.input_shape),
        "topology": topology,
        "constants": {"t0": c.t0, "c": c.c, "s": c.s},
        "neuron": {"kind": "pi2"} if net.gamma is None else {"kind": "temp", "gamma": net.gamma},
        "quantisation": None if net.bits is None else {"bits": net.bits},
        "provenance": dict(net.provenance),
    }
    if net.rectified:
        meta["scores"] = "rectified"
    return meta


def save_network(net: Pi2Network, path: str | Path) -> Path:
    """Write `net` to `path` (``.npz``); returns the path written."""
    path = Path(path)
    arrays = {f"layer{i}.weight": np.asarray(layer.weight, dtype=np.float32) for i, layer in enumerate(net.layers)}
    for i, layer in enumerate(net.layers):
        if layer.affine is not None:  # float64: a folded BatchNorm is not a delay and keeps its precision
            arrays[f"layer{i}.affine_scale"] = layer.affine.scale
            arrays[f"layer{i}.affine_shift"] = layer.affine.shift
    arrays[META_KEY] = np.frombuffer(json.dumps(network_meta(net), indent=1).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_atomic(path, buffer.getvalue())


def load_network(path: str | Path) -> Pi2Network:
    """Read and validate a network file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such network file (make one with `pi2 train` or `pi2 import`)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # a corrupt file fails in zipfile, zlib or numpy's header parser, each its own way
        raise ModelError(f"{path}: not a network file (.npz): {str(exc) or type(exc).__name__}") from None
    if META_KEY not in arrays:
        raise ModelError(f"{path}: missing '{META_KEY}'; is this a π² network file?")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: '{META_KEY}' is not valid JSON: {exc}") from None
    return network_from_meta(meta, arrays, str(path))


def _field(meta: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str, expected: str) -> Any:
    if key not in meta:
        raise ModelError(f"{where}: missing field '{key}' (expected {expected})")
    value = meta[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in np.atleast_1d(types):
        raise ModelError(f"{where}: field '{key}' = {value!r}; expected {expected}")
    return value


def network_from_meta(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], where: str) -> Pi2Network:
    """Build a network from a metadata record and its arrays, validating every field."""
    if not isinstance(meta, Mapping):
        raise ModelError(f"{where}: metadata must be a JSON object")
    if meta.get("format") != FORMAT:
        raise ModelError(f"{where}: field 'format' = {meta.get('format')!r}; expected {FORMAT!r}")
    version = _field(meta, "format_version", int, where, f"the integer {FORMAT_VERSION}")
    if version not in READS_VERSIONS:
        raise ModelError(f"{where}: field 'format_version' = {version}; this pi2 reads versions "
                         f"{', '.join(map(str, READS_VERSIONS))}")
    known = {"format", "format_version", "input_shape", "topology", "constants", "neuron", "quantisation", "scores",
             "provenance"}
    unknown = set(meta) - known
    if unknown:
        raise ModelError(f"{where}: unknown field(s) {sorted(unknown)}; expected {sorted(known)}")
    shape = _field(meta, "input_shape", list, where, "a list of positive integers")
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ModelError(f"{where}: field 'input_shape' = {shape!r}; expected a list of positive integers")
    raw_c = _field(meta, "constants", dict, where, "an object {t0, c, s}")
    if set(raw_c) != {"t0", "c", "s"}:
        raise ModelError(f"{where}: field 'constants' has keys {sorted(raw_c)}; expected ['c', 's', 't0']")
    constants = Constants(**{k: float(v) if isinstance(v, (int, float)) else v for k, v in raw_c.items()})
    neuron = _field(meta, "neuron", dict, where, '{"kind": "pi2"} or {"kind": "temp", "gamma": γ}')
    if neuron.get("kind") == "pi2" and set(neuron) == {"kind"}:
        gamma = None
    elif neuron.get("kind") == "temp" and set(neuron) == {"kind", "gamma"} and isinstance(neuron["gamma"], (int, float)):
        gamma = float(neuron["gamma"])
    else:
        raise ModelError(f"{where}: field 'neuron' = {neuron!r}; expected {{\"kind\": \"pi2\"}} or {{\"kind\": \"temp\", \"gamma\": number}}")
    quant = meta.get("quantisation")
    if quant is None:
        bits = None
    elif isinstance(quant, dict) and set(quant) == {"bits"} and isinstance(quant["bits"], int) and 1 <= quant["bits"] <= 16:
        bits = quant["bits"]
    else:
        raise ModelError(f"{where}: field 'quantisation' = {quant!r}; expected null or {{\"bits\": 1..16}}")
    scores = meta.get("scores", "linear")
    if scores not in ("linear", "rectified"):
        raise ModelError(f"{where}: field 'scores' = {scores!r}; expected 'linear' or 'rectified'")
    provenance = meta.get("provenance", {})
    if not isinstance(provenance, dict):
        raise ModelError(f"{where}: field 'provenance' must be an object, got {type(provenance).__name__}")
    if "dataset" in provenance:
        check_dataset_record(provenance["dataset"], shape, where)
    topology = _field(meta, "topology", list, where, "a non-empty list of layers")
    layers = []
    in_shape = tuple(shape)
    used: set[str] = set()
    for i, spec in enumerate(topology):
        layer = _layer(spec, arrays, i, in_shape, f"{where}: topology[{i}]", used)
        layers.append(layer)
        in_shape = layer.out_shape
    extra = set(arrays) - used
    if extra:
        raise ModelError(f"{where}: arrays {sorted(extra)} belong to no layer of the {len(topology)}-layer topology")
    try:
        return Pi2Network(tuple(layers), tuple(shape), constants, bits, gamma, provenance, scores == "rectified")
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None


def check_dataset_record(record: Any, shape: list[int], where: str) -> None:
    """provenance["dataset"]: {"name", "scale", "offset"}, each of scale/offset a number or one per channel."""
    expected = ('{"name": str, "scale": s, "offset": o} with s, o numbers or lists of one number per input '
                f"channel ({shape[0]})")
    if not (isinstance(record, dict) and isinstance(record.get("name"), str)):
        raise ModelError(f"{where}: field 'provenance.dataset' = {record!r}; expected {expected}")
    for key in ("scale", "offset"):
        value = record.get(key)
        values = value if isinstance(value, list) else [value]
        if not (values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                               for v in values) and (not isinstance(value, list) or len(value) == shape[0])):
            raise ModelError(f"{where}: field 'provenance.dataset.{key}' = {value!r}; expected {expected}")


def _layer(spec: Any, arrays: Mapping[str, np.ndarray], i: int, in_shape: tuple[int, ...], where: str,
           used: set[str]) -> DenseLayer | ConvLayer:
    if not isinstance(spec, dict):
        raise ModelError(f"{where}: expected an object, got {spec!r}")
    weight = _array(arrays, f"layer{i}.weight", where, used)
    kind = spec.get("type")
    k = spec.get("k")
    if not isinstance(k, int) or isinstance(k, bool):
        raise ModelError(f"{where}: field 'k' = {k!r}; expected a positive integer")
    required = {"dense": {"type", "k"}, "conv": {"type", "k", "stride", "padding", "pool"}}.get(kind)
    if required is None:
        raise ModelError(f"{where}: field 'type' = {kind!r}; expected 'dense' or 'conv'")
    if not required <= set(spec) <= required | OPTIONAL_LAYER_KEYS:
        raise ModelError(f"{where}: {kind} layer has keys {sorted(spec)}; expected {sorted(required)} "
                         f"and optionally {sorted(OPTIONAL_LAYER_KEYS)}")
    s = spec.get("s")
    if s is not None and not (isinstance(s, (int, float)) and not isinstance(s, bool) and np.isfinite(s) and s > 0):
        raise ModelError(f"{where}: field 's' = {s!r}; expected a finite number > 0 (or no 's': the constant)")
    residual = spec.get("residual")
    if residual is not None and not (isinstance(residual, int) and not isinstance(residual, bool)
                                     and 0 <= residual <= i):
        raise ModelError(f"{where}: field 'residual' = {residual!r}; expected the index 0..{i} of this or an "
                         "earlier layer, whose input is added")
    affine = None
    if "affine" in spec:
        if spec["affine"] is not True:
            raise ModelError(f"{where}: field 'affine' = {spec['affine']!r}; expected true (with arrays "
                             f"layer{i}.affine_scale and layer{i}.affine_shift), or no 'affine'")
        scale, shift = (_array(arrays, f"layer{i}.affine_{part}", where, used) for part in ("scale", "shift"))
        try:
            affine = Affine(scale.astype(np.float64), shift.astype(np.float64))
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from None
    extra = {"s": None if s is None else float(s), "affine": affine, "residual": residual}
    try:
        if kind == "dense":
            return DenseLayer(weight.astype(np.float64), k, **extra)
        if len(in_shape) != 3:
            raise ModelError(f"conv needs a (C, H, W) input, gets shape {in_shape}")
        for key in ("stride", "padding", "pool"):
            if not isinstance(spec[key], int) or isinstance(spec[key], bool):
                raise ModelError(f"field '{key}' = {spec[key]!r}; expected an integer")
        return ConvLayer(weight.astype(np.float64), k, in_shape, spec["stride"], spec["padding"], spec["pool"], **extra)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None


def _array(arrays: Mapping[str, np.ndarray], name: str, where: str, used: set[str]) -> np.ndarray:
    if name not in arrays:
        raise ModelError(f"{where}: array '{name}' is missing from the file")
    value = arrays[name]
    if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
        raise ModelError(f"{where}: array '{name}' must hold finite floats (dtype {value.dtype})")
    used.add(name)
    return value

"""Dense π² networks as NIR graphs (the Neuromorphic Intermediate Representation, ``nir`` package).

NIR has no π² neuron, so each π²_K layer becomes two standard nodes: the synapses as a
``Linear`` (whose weight, out×in as NIR requires, is the π² weight: delays d± = [c ± w]₊), and the
neuron as a ``Scale`` by −s (the scale in the layer output −s·y) whose node metadata carries K.
Convention (version `CONVENTION`)::

    graph.metadata   pi2_convention=1, pi2_t0, pi2_c (floats), pi2_neuron ("pi2" | "temp"),
                     pi2_gamma (float, TEMP only), pi2_bits (int, only if delays are quantised),
                     pi2_provenance (the network's provenance as a JSON string)
    input            Input(shape = input_shape)
    flatten          Flatten(start_dim=0)              only if input_shape has more than one axis
    layer<l>.synapse Linear(weight = W_lᵀ)             W_l is the layer's in×out weight, float64
    layer<l>.neuron  Scale(scale = −s_l, one per neuron) metadata pi2_k = K_l  (s_l: the layer's s)
    output           Output(shape = [classes])
    edges            a single chain input → [flatten →] layer0.synapse → layer0.neuron → … → output

Hidden layers pass ReLU(−s·y) on, the last layer's −s·y are the class scores (pi2-model.md);
the rectifier is implied by position. Import reverses the mapping exactly (weights stay float64),
so the imported network gives the same scores. It also accepts a plain NIR chain
Input → [Flatten →] Linear → … → Linear → Output (or ``Affine`` with an all-zero bias) without the
π² metadata, e.g. a conventional teacher: then K comes from the caller and the constants are the
defaults. Any other node (a LIF, a Conv2d, a branch) is refused with an `ImportFormatError`
naming it. Only dense networks map; conv networks are refused on export.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from testbed.errors import ImportFormatError, ModelError
from testbed.model.encoding import Constants
from testbed.model.network import DenseLayer, Pi2Network

CONVENTION = 1
ACCEPTED = "Input → [Flatten →] (Linear → Scale with metadata pi2_k)… → Output, or a plain Input → Linear… → Output chain"


def _nir() -> Any:
    try:
        import nir
    except ImportError:
        raise ImportFormatError("NIR support needs the 'nir' package: pip install 'pi2-testbed[nir]'") from None
    return nir


def network_to_nir(net: Pi2Network) -> Any:
    """The NIR graph of a dense π² network (see the module doc for the convention)."""
    nir = _nir()
    for i, layer in enumerate(net.layers):
        if not isinstance(layer, DenseLayer):
            raise ModelError(f"NIR export covers dense π² networks only; layer {i} is a {type(layer).__name__}")
        if layer.affine is not None or layer.residual is not None:
            raise ModelError(f"NIR export covers chains of π² layers; layer {i} has an affine map or a residual addition")
    if net.rectified:
        raise ModelError("NIR export covers linear class scores −s·y; this network rectifies them")
    c = net.constants
    meta: dict[str, Any] = {"pi2_convention": CONVENTION, "pi2_t0": float(c.t0), "pi2_c": float(c.c),
                            "pi2_neuron": "pi2" if net.gamma is None else "temp",
                            "pi2_provenance": json.dumps(dict(net.provenance))}
    if net.gamma is not None:
        meta["pi2_gamma"] = float(net.gamma)
    if net.bits is not None:
        meta["pi2_bits"] = int(net.bits)
    nodes: dict[str, Any] = {"input": nir.Input(input_type=np.array(net.input_shape))}
    chain = ["input"]
    if len(net.input_shape) > 1:
        nodes["flatten"] = nir.Flatten(input_type=np.array(net.input_shape), start_dim=0)
        chain.append("flatten")
    for i, layer in enumerate(net.layers):
        nodes[f"layer{i}.synapse"] = nir.Linear(weight=np.ascontiguousarray(layer.weight.T, dtype=np.float64))
        nodes[f"layer{i}.neuron"] = nir.Scale(scale=np.full(layer.n_neurons, -net.scales[i]),
                                              metadata={"pi2_k": int(layer.k)})
        chain += [f"layer{i}.synapse", f"layer{i}.neuron"]
    nodes["output"] = nir.Output(output_type=np.array([net.n_classes]))
    chain.append("output")
    return nir.NIRGraph(nodes=nodes, edges=list(zip(chain, chain[1:])), metadata=meta)


def export_nir(net: Pi2Network, path: str | Path) -> Path:
    """Write `net` as a NIR graph file (HDF5, conventionally ``.nir``); returns the path."""
    path = Path(path)
    _nir().write(path, network_to_nir(net))
    return path


def import_nir(path: str | Path, k: Sequence[int] | None = None) -> Pi2Network:
    """Read a NIR graph file as a π² network; `k` is needed only for plain (metadata-free) graphs."""
    path = Path(path)
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such NIR file")
    nir = _nir()
    try:
        graph = nir.read(path)
    except Exception as exc:  # h5py/nir raise OSError, KeyError, AssertionError, ValueError… on foreign files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImportFormatError(f"{path}: not a NIR graph file nir can read: {detail}") from None
    return network_from_nir(graph, k, str(path))


def network_from_nir(graph: Any, k: Sequence[int] | None = None, where: str = "NIR graph") -> Pi2Network:
    """The π² network a NIR graph describes (see the module doc); the inverse of `network_to_nir`."""
    nir = _nir()
    chain = _chain(graph, where)
    meta = dict(getattr(graph, "metadata", None) or {})
    ours = "pi2_convention" in meta
    if ours and _scalar(meta["pi2_convention"], int, where, "pi2_convention") != CONVENTION:
        raise ImportFormatError(f"{where}: graph metadata pi2_convention = {meta['pi2_convention']!r}; "
                                f"this pi2 reads convention {CONVENTION}")
    input_shape = tuple(int(d) for d in np.atleast_1d(graph.nodes[chain[0]].input_type["input"]))
    weights: list[np.ndarray] = []
    ks: list[int | None] = []
    scales: list[float] = []
    body = chain[1:-1]
    if body and isinstance(graph.nodes[body[0]], nir.Flatten):
        body = body[1:]
    for name in body:
        node = graph.nodes[name]
        if isinstance(node, (nir.Linear, nir.Affine)):
            weights.append(_weight(node, name, where, nir))
            ks.append(None)
        elif isinstance(node, nir.Scale) and ours and weights and ks[-1] is None:
            ks[-1] = _neuron_k(node, name, where)
            scales.append(_neuron_scale(node, name, where))
        else:
            raise ImportFormatError(f"{where}: node '{name}' ({type(node).__name__}) has no π² mapping here; "
                                    f"accepted: {ACCEPTED}")
    if not weights:
        raise ImportFormatError(f"{where}: the graph has no Linear layers; accepted: {ACCEPTED}")
    if ours and any(kk is None for kk in ks):
        missing = [i for i, kk in enumerate(ks) if kk is None]
        raise ImportFormatError(f"{where}: layers {missing} have a Linear node but no π² neuron (Scale with pi2_k) after it")
    for i, w in enumerate(weights):
        n_in = int(np.prod(input_shape)) if i == 0 else weights[i - 1].shape[1]
        if w.shape[0] != n_in:
            raise ImportFormatError(f"{where}: layer {i} Linear takes {w.shape[0]} inputs but receives {n_in}")
    ks = _merge_k(ks, k, where)
    for i, w in enumerate(weights):
        if not 1 <= ks[i] <= 2 * w.shape[0]:
            raise ImportFormatError(f"{where}: layer {i} K = {ks[i]}; expected 1..{2 * w.shape[0]} (2 × fan-in)")
    if ours:
        constants, gamma, bits, provenance = _graph_constants(meta, scales, where)
    else:
        constants, gamma, bits, provenance = Constants(), None, None, {"import": {"source": where, "format": "nir"}}
    # a layer whose Scale differs from the last one's keeps its own s (testbed.model.network)
    own = [None if not ours or scales[i] == constants.s else scales[i] for i in range(len(weights))]
    layers = tuple(DenseLayer(w, kk, s=si) for w, kk, si in zip(weights, ks, own))
    return Pi2Network(layers, input_shape, constants, bits, gamma, provenance)


def _chain(graph: Any, where: str) -> list[str]:
    """Node names from the single Input to the single Output, refusing branches and strays."""
    nir = _nir()
    nodes = getattr(graph, "nodes", None)
    if not isinstance(nodes, dict):
        raise ImportFormatError(f"{where}: not a NIRGraph (got {type(graph).__name__})")
    inputs = [n for n, node in nodes.items() if isinstance(node, nir.Input)]
    outputs = [n for n, node in nodes.items() if isinstance(node, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ImportFormatError(f"{where}: needs exactly one Input and one Output node, has inputs {inputs} "
                                f"and outputs {outputs}")
    successors: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        successors.setdefault(src, []).append(dst)
    chain = [inputs[0]]
    while chain[-1] != outputs[0]:
        nxt = successors.get(chain[-1], [])
        if len(nxt) != 1:
            raise ImportFormatError(f"{where}: node '{chain[-1]}' has {len(nxt)} successors {nxt}; "
                                    "π² networks map only from a single chain")
        if nxt[0] in chain:
            raise ImportFormatError(f"{where}: the graph loops back to node '{nxt[0]}'")
        chain.append(nxt[0])
    strays = sorted(set(nodes) - set(chain))
    if strays:
        raise ImportFormatError(f"{where}: node '{strays[0]}' is not on the Input → Output chain")
    if successors.get(outputs[0]):
        raise ImportFormatError(f"{where}: Output node '{outputs[0]}' has successors {successors[outputs[0]]}")
    return chain


def _weight(node: Any, name: str, where: str, nir: Any) -> np.ndarray:
    if isinstance(node, nir.Affine) and np.any(np.asarray(node.bias) != 0):
        raise ImportFormatError(f"{where}: node '{name}' (Affine) has a non-zero bias, but π² layers have no biases")
    w = np.asarray(node.weight)
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating) or not np.isfinite(w).all():
        raise ImportFormatError(f"{where}: node '{name}' weight must be a finite 2-D float array (out×in), "
                                f"got shape {w.shape} dtype {w.dtype}")
    return np.ascontiguousarray(w.T, dtype=np.float64)


def _neuron_k(node: Any, name: str, where: str) -> int:
    if "pi2_k" not in node.metadata:
        raise ImportFormatError(f"{where}: node '{name}' (Scale) lacks metadata pi2_k, so it is no π² neuron")
    return _scalar(node.metadata["pi2_k"], int, where, f"{name}.pi2_k")


def _neuron_scale(node: Any, name: str, where: str) -> float:
    scale = np.asarray(node.scale, dtype=np.float64)
    if scale.ndim != 1 or scale.size == 0 or not np.all(scale == scale[0]) or not scale[0] < 0:
        raise ImportFormatError(f"{where}: node '{name}' (Scale) must scale every neuron by the same −s < 0, "
                                f"got {scale[:4]}…")
    return float(-scale[0])


def _scalar(value: Any, kind: type, where: str, field: str) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise ImportFormatError(f"{where}: metadata {field} = {value!r}; expected a {kind.__name__}")


def _merge_k(graph_k: list[int | None], k: Sequence[int] | None, where: str) -> list[int]:
    """K per layer from the graph where it says, else from the caller; the two must agree."""
    if k is not None and len(k) != len(graph_k):
        raise ImportFormatError(f"{where}: the graph has {len(graph_k)} layers but --k gives {len(k)} values")
    merged = []
    for i, gk in enumerate(graph_k):
        if gk is None and k is None:
            raise ImportFormatError(f"{where}: layer {i} carries no π² K (no pi2 metadata); give K per layer with --k")
        if gk is not None and k is not None and int(k[i]) != gk:
            raise ImportFormatError(f"{where}: layer {i} has K = {gk} in the graph but --k says {k[i]}; drop --k")
        merged.append(gk if gk is not None else int(k[i]))
    return merged


def _graph_constants(meta: dict[str, Any], scales: list[float], where: str
                     ) -> tuple[Constants, float | None, int | None, dict[str, Any]]:
    known = {"pi2_convention", "pi2_t0", "pi2_c", "pi2_neuron", "pi2_gamma", "pi2_bits", "pi2_provenance"}
    unknown = sorted(key for key in meta if key.startswith("pi2_") and key not in known)
    if unknown:
        raise ImportFormatError(f"{where}: unknown graph metadata {unknown}; expected {sorted(known)}")
    for key in ("pi2_t0", "pi2_c", "pi2_neuron", "pi2_provenance"):
        if key not in meta:
            raise ImportFormatError(f"{where}: graph metadata lacks {key} (see testbed.model.nir_io)")
    constants = Constants(_scalar(meta["pi2_t0"], float, where, "pi2_t0"), _scalar(meta["pi2_c"], float, where, "pi2_c"),
                          scales[-1])
    kind = _scalar(meta["pi2_neuron"], str, where, "pi2_neuron")
    if kind == "pi2" and "pi2_gamma" not in meta:
        gamma = None
    elif kind == "temp" and "pi2_gamma" in meta:
        gamma = _scalar(meta["pi2_gamma"], float, where, "pi2_gamma")
    else:
        raise ImportFormatError(f"{where}: metadata pi2_neuron = {kind!r}; expected 'pi2' (no pi2_gamma) "
                                "or 'temp' with pi2_gamma")
    bits = _scalar(meta["pi2_bits"], int, where, "pi2_bits") if "pi2_bits" in meta else None
    if bits is not None and not 1 <= bits <= 16:
        raise ImportFormatError(f"{where}: metadata pi2_bits = {bits}; expected 1..16")
    try:
        provenance = json.loads(_scalar(meta["pi2_provenance"], str, where, "pi2_provenance"))
    except json.JSONDecodeError as exc:
        raise ImportFormatError(f"{where}: metadata pi2_provenance is not JSON: {exc}") from None
    if not isinstance(provenance, dict):
        raise ImportFormatError(f"{where}: metadata pi2_provenance must be a JSON object")
    return constants, gamma, bits, provenance

"""Turn a PyTorch state_dict (name -> numpy array) into a `Pi2Network`.

Architectures (`ARCHS`):

- ``mlp``: every weight is 2-D; the network is dense π² layers in state_dict order, e.g.
  784-500-10 from ``fc1.weight`` (500×784) and ``fc2.weight`` (10×500).
- ``lenet5``: the classic LeNet-5 for 1×28×28 inputs: ``conv1`` 6×1×5×5 (padding 2) + 2×2 pool,
  ``conv2`` 16×6×5×5 + 2×2 pool, then dense ``fc1`` 400→120, ``fc2`` 120→84, ``fc3`` 84→10.

Which tensors are read: every entry named ``<name>.weight`` (or just ``weight``), in the order
the state_dict stores them (torch keeps module registration order, which is forward order for
``nn.Sequential`` and for conventionally written models). Accepted names therefore include
``fc1.weight``…, ``layers.0.weight``…, ``features.0.weight``/``classifier.0.weight``… Leading
wrapper prefixes ``module.`` (DataParallel) and ``model.`` are stripped. A ``.bias`` entry is
accepted only if it is all zeros, because π² layers have no biases: a non-zero bias is refused
(retrain with ``bias=False``), never silently dropped. Any other entry (e.g. batch-norm
statistics) is refused too.

Dense weight orientation: a conventional teacher's ``nn.Linear`` stores out×in; a π² student
keeps in×out (as `DenseLayer` does). The orientation is inferred from the chain of shapes: the
one under which every layer's inputs equal the previous layer's outputs (for LeNet-5, the first
dense layer must also take the 400 conv outputs). When both readings chain — all layers square,
a single dense layer, or mirror-image shapes — the caller must say which (`ORIENTATIONS`).
Convolution weights are Cout×Cin×kh×kw in both (torch's layout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from testbed.errors import ImportFormatError
from testbed.model.encoding import Constants
from testbed.model.network import ConvLayer, DenseLayer, Layer, Pi2Network

ARCHS = ("mlp", "lenet5")
ORIENTATIONS = ("auto", "teacher", "student")
WRAPPER_PREFIXES = ("module.", "model.")

# LeNet-5 on 1×28×28: (conv weight shape, padding, pool) per conv layer, then dense sizes.
LENET5_INPUT = (1, 28, 28)
LENET5_CONVS = (((6, 1, 5, 5), 2, 2), ((16, 6, 5, 5), 0, 2))
LENET5_DENSE = ((400, 120), (120, 84), (84, 10))


def weight_entries(state: Mapping[str, np.ndarray], where: str) -> list[tuple[str, np.ndarray]]:
    """(name, weight) pairs in state_dict order, with wrapper prefixes stripped and biases checked."""
    weights: list[tuple[str, np.ndarray]] = []
    for raw_name, value in state.items():
        name = raw_name
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        leaf = name.rsplit(".", 1)[-1]
        value = np.asarray(value)
        if leaf == "weight":
            if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
                raise ImportFormatError(f"{where}: '{raw_name}' must hold finite floats (dtype {value.dtype})")
            weights.append((name[: -len(".weight")] if name != "weight" else name, value))
        elif leaf == "bias":
            if np.any(value != 0):
                raise ImportFormatError(
                    f"{where}: '{raw_name}' is a non-zero bias, but π² layers have no biases; "
                    "train the network with bias=False (e.g. nn.Linear(n, m, bias=False))")
        else:
            raise ImportFormatError(f"{where}: entry '{raw_name}' is neither a weight nor a bias; "
                                    "π² networks hold only conv/linear weights")
    if not weights:
        raise ImportFormatError(f"{where}: no '<name>.weight' entries in the state_dict")
    return weights


def infer_arch(weights: Sequence[tuple[str, np.ndarray]]) -> str:
    """``lenet5`` if the checkpoint has convolution (4-D) weights, else ``mlp``."""
    return "lenet5" if any(w.ndim == 4 for _, w in weights) else "mlp"


def resolve_orientation(dense: Sequence[tuple[str, np.ndarray]], n_in: int | None, orientation: str,
                        where: str) -> str:
    """``teacher`` (out×in) or ``student`` (in×out): the one whose shapes chain; see the module doc.

    `n_in` is the number of inputs the first dense layer must take, if known.
    """
    if orientation not in ORIENTATIONS:
        raise ImportFormatError(f"orientation {orientation!r} is unknown; expected one of {list(ORIENTATIONS)}")
    bad = [name for name, w in dense if w.ndim != 2]
    if bad:
        raise ImportFormatError(f"{where}: dense weights {bad} are not 2-D")
    fits = {o: _chains(dense, n_in, o) for o in ("teacher", "student")}
    if orientation != "auto":
        if not fits[orientation]:
            raise ImportFormatError(f"{where}: weight shapes {_shapes(dense)} do not chain as {orientation} "
                                    f"({_ORIENT_DOC[orientation]}){_need(n_in)}")
        return orientation
    matching = [o for o, ok in fits.items() if ok]
    if not matching:
        raise ImportFormatError(f"{where}: weight shapes {_shapes(dense)} chain neither as teacher (out×in) "
                                f"nor as student (in×out){_need(n_in)}")
    if len(matching) == 2:
        raise ImportFormatError(f"{where}: weight shapes {_shapes(dense)} chain both as teacher (out×in) and as "
                                "student (in×out); say which with --orientation teacher|student")
    return matching[0]


_ORIENT_DOC = {"teacher": "nn.Linear: out×in", "student": "π² layer: in×out"}


def _need(n_in: int | None) -> str:
    return "" if n_in is None else f" from {n_in} inputs"


def _shapes(dense: Sequence[tuple[str, np.ndarray]]) -> str:
    return ", ".join(f"{name} {tuple(w.shape)}" for name, w in dense)


def _chains(dense: Sequence[tuple[str, np.ndarray]], n_in: int | None, orientation: str) -> bool:
    size = n_in
    for _, w in dense:
        n, m = w.shape if orientation == "student" else w.shape[::-1]
        if size is not None and n != size:
            return False
        size = m
    return True


def network_from_state_dict(state: Mapping[str, np.ndarray], k: Sequence[int], arch: str | None = None,
                            orientation: str = "auto", constants: Constants | None = None,
                            where: str = "state_dict") -> Pi2Network:
    """A π² network from the weights of `state` (see the module doc), with K per layer from `k`.

    `arch` is ``mlp`` or ``lenet5`` (``None``: ``lenet5`` iff there are conv weights). The result's
    provenance records the architecture, orientation and the layer names used.
    """
    weights = weight_entries(state, where)
    arch = infer_arch(weights) if arch is None else arch
    if arch not in ARCHS:
        raise ImportFormatError(f"architecture {arch!r} is unknown; expected one of {list(ARCHS)}")
    if len(k) != len(weights):
        raise ImportFormatError(f"{where}: {len(weights)} weight tensors ({', '.join(n for n, _ in weights)}) "
                                f"need {len(weights)} K values, got --k {','.join(map(str, k))}")
    if arch == "mlp":
        convs, dense = [], weights
        bad = [name for name, w in weights if w.ndim != 2]
        if bad:
            raise ImportFormatError(f"{where}: mlp needs 2-D weights; {bad} are not (use --arch lenet5 for conv nets)")
        input_shape: tuple[int, ...] | None = None
    else:
        convs, dense = _split_lenet5(weights, where)
        input_shape = LENET5_INPUT
    orient = resolve_orientation(dense, 400 if arch == "lenet5" else None, orientation, where)
    layers: list[Layer] = []
    in_shape: tuple[int, ...] = LENET5_INPUT
    for i, ((name, w), (_, padding, pool)) in enumerate(zip(convs, LENET5_CONVS)):
        _check_k(k[i], 2 * int(np.prod(w.shape[1:])), name, where)
        layer = ConvLayer(w.astype(np.float64), int(k[i]), in_shape, 1, padding, pool)
        layers.append(layer)
        in_shape = layer.out_shape
    for i, (name, w) in enumerate(dense, start=len(convs)):
        w = w if orient == "student" else w.T
        _check_k(k[i], 2 * w.shape[0], name, where)
        layers.append(DenseLayer(np.ascontiguousarray(w, dtype=np.float64), int(k[i])))
    if input_shape is None:
        input_shape = (layers[0].n_inputs,)
    provenance = {"import": {"source": where, "arch": arch, "orientation": orient,
                             "layers": [name for name, _ in weights]}}
    return Pi2Network(tuple(layers), input_shape, constants if constants is not None else Constants(),
                      provenance=provenance)


def _split_lenet5(weights: Sequence[tuple[str, np.ndarray]], where: str
                  ) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    ranks = [w.ndim for _, w in weights]
    if ranks != [4, 4, 2, 2, 2]:
        raise ImportFormatError(f"{where}: lenet5 needs 2 conv (4-D) then 3 linear (2-D) weights, got "
                                f"{', '.join(f'{n} {tuple(w.shape)}' for n, w in weights)}")
    convs = list(weights[:2])
    for (name, w), (shape, _, _) in zip(convs, LENET5_CONVS):
        if tuple(w.shape) != shape:
            raise ImportFormatError(f"{where}: lenet5 conv '{name}' has shape {tuple(w.shape)}; expected {shape}")
    dense = list(weights[2:])
    for (name, w), (n, m) in zip(dense, LENET5_DENSE):
        if sorted(w.shape) != sorted((n, m)):
            raise ImportFormatError(f"{where}: lenet5 linear '{name}' has shape {tuple(w.shape)}; "
                                    f"expected {m}×{n} (teacher) or {n}×{m} (student)")
    return convs, dense


def _check_k(k: int, arrivals: int, name: str, where: str) -> None:
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 1 <= k <= arrivals):
        raise ImportFormatError(f"{where}: layer '{name}' has {arrivals} arrivals per neuron (2 × fan-in); "
                                f"its K must be an integer in 1..{arrivals}, got {k!r}")

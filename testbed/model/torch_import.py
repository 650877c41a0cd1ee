"""Turn a PyTorch state_dict (name -> numpy array) into a `Pi2Network`.

Architectures (`ARCHS`):

- ``mlp``: every weight is 2-D; the network is dense π² layers in state_dict order, e.g.
  784-500-10 from ``fc1.weight`` (500×784) and ``fc2.weight`` (10×500).
- ``lenet5``: LeNet-5 for 1×28×28 inputs: ``conv1`` 6×1×5×5 + 2×2 pool, ``conv2`` 16×6×5×5 + 2×2
  pool, then dense ``fc1`` →120, ``fc2`` 120→84, ``fc3`` 84→10. The fan-in of fc1 tells conv1's
  padding: 400 is the classic net (padding 2, what `pi2 train` builds), 256 the authors' ``LeNet5_K``
  (padding 0).
- ``resnet9``: the authors' ResNet-9 for 3×32×32 inputs (CIFAR-10/100, ``ResNet9_100_temp1``): eight
  3×3 convolutions (padding 1) each followed by a BatchNorm, then a dense classifier. Layers
  c1 3→64, c2 64→128 + pool 2, res11 and res21 128→128 (res21's output adds res11's input),
  c3 128→256 + pool 2, c4 256→512 + pool 2, res211 and res221 512→512 (res221's output adds
  res211's input) + pool 4, classifier 512→classes.

Which tensors are read: entries ``<name>.weight`` (and ``.bias``, which must be all zeros: π² layers
have no biases, so a non-zero bias is refused, never silently dropped), in state_dict order (torch
keeps module registration order, which is forward order for conventionally written models), and
for resnet9 the BatchNorms' ``weight``, ``bias``, ``running_mean``, ``running_var`` (and
``num_batches_tracked``). Leading wrapper prefixes ``module.`` (DataParallel) and ``model.`` are
stripped. Anything else is refused.

Layouts. A conventional teacher keeps ``nn.Conv2d`` weights Cout×Cin×kh×kw and ``nn.Linear``
weights out×in. The authors' π² student keeps a convolution (``temp_conv_k_opt``) as
``<name>.cnn.weight`` of shape (k·k·Cin)×Cout, whose rows follow torch's ``F.unfold`` patch order
(channel, kernel row, kernel column) — the transpose of the Conv2d weight flattened, which is how
the student was initialised from the teacher — and a dense layer (``MPLayer_in_K``) as in×out.
Dense orientation is inferred from the chain of shapes; when both readings chain, the caller
must say which (`ORIENTATIONS`).

Constants (`SCALES`). ``uniform`` is the recipe of pi2-model.md (one s, linear scores).
``authors`` is what the authors' networks compute: LeNet5_K passes ReLU(−1·y) after conv1 and
ReLU(−10·y) after conv2, fc1 and fc2, and its class scores are ReLU(−10·y) (rectified); ResNet-9
feeds −1·y of every convolution to its BatchNorm (folded into a per-channel affine map, ε = 1e-5,
torch's default, which a state_dict does not store), then ReLU, and scores −10·y. A ResNet-9
checkpoint with a BatchNorm of the class scores is the authors' older ``ResNet9_100``, which feeds
+y to every BatchNorm and scores BatchNorm(y): the sign goes into the affine maps. ``auto`` is
``authors`` for the authors' π² layouts (``.cnn.weight`` keys) and for resnet9, else ``uniform``.

π² delays clamp weights to [−c, c]; the authors' layers do not (d± = [3 ± w]₊), so a checkpoint
with weights beyond ±c computes differently here. The provenance counts them (``beyond_c``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from testbed.errors import ImportFormatError, ModelError
from testbed.model.encoding import Constants
from testbed.model.network import Affine, ConvLayer, DenseLayer, Layer, Pi2Network

ARCHS = ("mlp", "lenet5", "resnet9")
ORIENTATIONS = ("auto", "teacher", "student")
SCALES = ("auto", "uniform", "authors")
WRAPPER_PREFIXES = ("module.", "model.")
BN_EPS = 1e-5
_LEAVES = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}

LENET5_INPUT = (1, 28, 28)
LENET5_CONVS = ((6, 1, 5, 5), (16, 6, 5, 5))
LENET5_PADDING = {400: 2, 256: 0}  # fc1 fan-in -> conv1 padding
LENET5_DENSE = ((120, 84), (84, 10))  # fc2, fc3 (in, out); fc1 is (fan-in, 120)
LENET5_AUTHORS_S = (1.0, 10.0, 10.0, 10.0, 10.0)

RESNET9_INPUT = (3, 32, 32)
RESNET9_KERNEL = 3
RESNET9_POOL = {1: 2, 4: 2, 5: 2, 7: 4}  # conv index -> max pooling after it (7: the classifier's)
RESNET9_RESIDUAL = {3: 2, 7: 6}  # conv index -> the layer whose input its output adds
RESNET9_CONV_S, RESNET9_SCORE_S = 1.0, 10.0


@dataclass
class _Module:
    """The entries of one torch module: its name (wrappers stripped), kind, and tensors by leaf name."""

    name: str
    kind: str = ""  # "conv" (Cout×Cin×kh×kw), "pi2conv" ((k·k·Cin)×Cout), "dense" (2-D), "batchnorm"
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)  # leaf -> the entry's name in the state_dict

    @property
    def weight(self) -> np.ndarray:
        return self.tensors["weight"]


def _strip(name: str) -> str:
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def modules_of(state: Mapping[str, np.ndarray], where: str) -> list[_Module]:
    """The state_dict's entries grouped by module, in order, each classified and checked."""
    groups: dict[str, _Module] = {}
    for raw_name, value in state.items():
        name = _strip(raw_name)
        prefix, _, leaf = name.rpartition(".")
        if leaf not in _LEAVES:
            raise ImportFormatError(f"{where}: entry '{raw_name}' is neither a weight nor a bias; "
                                    "π² networks hold only conv/linear weights (and, in resnet9, BatchNorms)")
        module = groups.setdefault(prefix, _Module(prefix))
        module.tensors[leaf] = np.asarray(value)
        module.raw[leaf] = raw_name
    modules = list(groups.values())
    for module in modules:
        _classify(module, where)
    if not any(m.kind in ("conv", "pi2conv", "dense") for m in modules):
        raise ImportFormatError(f"{where}: no '<name>.weight' entries in the state_dict")
    return modules


def _classify(module: _Module, where: str) -> None:
    tensors, raw = module.tensors, module.raw
    for leaf, value in tensors.items():
        if leaf != "num_batches_tracked" and (not np.issubdtype(value.dtype, np.floating)
                                              or not np.isfinite(value).all()):
            raise ImportFormatError(f"{where}: '{raw[leaf]}' must hold finite floats (dtype {value.dtype})")
    if "running_mean" in tensors or "running_var" in tensors:
        missing = [leaf for leaf in ("running_mean", "running_var") if leaf not in tensors]
        sizes = {v.shape for leaf, v in tensors.items() if leaf != "num_batches_tracked"}
        if missing or len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise ImportFormatError(f"{where}: BatchNorm '{module.name}' needs 1-D running_mean and running_var "
                                    f"(and weight, bias) of one size; has {sorted(tensors)} of shapes {sorted(sizes)}")
        if np.any(tensors["running_var"] < 0):
            raise ImportFormatError(f"{where}: BatchNorm '{module.name}' has a negative running_var")
        module.kind = "batchnorm"
        return
    if "weight" not in tensors:
        leaf = sorted(tensors)[0]
        if leaf == "bias" and not np.any(tensors[leaf]):
            module.kind = "ignored"  # a zero bias alone carries nothing
            return
        raise ImportFormatError(f"{where}: entry '{raw[leaf]}' is neither a weight nor a bias; "
                                "π² networks hold only conv/linear weights")
    if "bias" in tensors and np.any(tensors["bias"] != 0):
        raise ImportFormatError(
            f"{where}: '{raw['bias']}' is a non-zero bias, but π² layers have no biases; "
            "train the network with bias=False (e.g. nn.Linear(n, m, bias=False))")
    if "num_batches_tracked" in tensors:
        raise ImportFormatError(f"{where}: entry '{raw['num_batches_tracked']}' belongs to a BatchNorm without "
                                "running statistics")
    weight = tensors["weight"]
    if weight.ndim == 2 and (module.name == "cnn" or module.name.endswith(".cnn")):
        module.kind, module.name = "pi2conv", module.name[: -len("cnn")].rstrip(".") or "cnn"
    elif weight.ndim in (2, 4):
        module.kind = "dense" if weight.ndim == 2 else "conv"
    else:
        raise ImportFormatError(f"{where}: '{raw['weight']}' has shape {weight.shape}; expected a 2-D linear "
                                "or 4-D convolution weight")
    module.name = module.name or "weight"


def infer_arch(modules: Sequence[_Module]) -> str:
    """``resnet9`` if the checkpoint has BatchNorms or more than two convolutions, ``lenet5`` if it
    has convolutions, else ``mlp``."""
    convs = sum(m.kind in ("conv", "pi2conv") for m in modules)
    if any(m.kind == "batchnorm" for m in modules) or convs > 2:
        return "resnet9"
    return "lenet5" if convs else "mlp"


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


def conv_weight(module: _Module, c_in: int, kernel: int, where: str) -> np.ndarray:
    """The Cout×Cin×kh×kw weight of a conv module; a π² ``.cnn`` weight (k·k·Cin)×Cout is
    transposed and unflattened in F.unfold's (channel, row, column) order."""
    w = module.weight
    if module.kind == "conv":
        return w.astype(np.float64)
    rows, c_out = w.shape
    if rows != c_in * kernel * kernel:
        raise ImportFormatError(f"{where}: π² conv '{module.name}.cnn.weight' has shape {tuple(w.shape)}; its rows "
                                f"must be {c_in}·{kernel}·{kernel} = {c_in * kernel * kernel} (Cin·kh·kw, F.unfold "
                                f"order) for {c_in} input channels")
    return np.ascontiguousarray(w.T.reshape(c_out, c_in, kernel, kernel), dtype=np.float64)


def network_from_state_dict(state: Mapping[str, np.ndarray], k: Sequence[int], arch: str | None = None,
                            orientation: str = "auto", constants: Constants | None = None,
                            where: str = "state_dict", scales: str = "auto") -> Pi2Network:
    """A π² network from the weights of `state` (see the module doc), with K per layer from `k`.

    `arch` is one of `ARCHS` (None: inferred, `infer_arch`), `scales` one of `SCALES`. The result's
    provenance records the architecture, layout, orientation, constants and the layer names used.
    """
    modules = modules_of(state, where)
    arch = infer_arch(modules) if arch is None else arch
    if arch not in ARCHS:
        raise ImportFormatError(f"architecture {arch!r} is unknown; expected one of {list(ARCHS)}")
    if scales not in SCALES:
        raise ImportFormatError(f"constants {scales!r} are unknown; expected one of {list(SCALES)}")
    weighted = [m for m in modules if m.kind in ("conv", "pi2conv", "dense")]
    if len(k) != len(weighted):
        raise ImportFormatError(f"{where}: {len(weighted)} weight tensors ({', '.join(m.name for m in weighted)}) "
                                f"need {len(weighted)} K values, got --k {','.join(map(str, k))}")
    pi2_layout = any(m.kind == "pi2conv" for m in modules)
    authors = scales == "authors" or scales == "auto" and (pi2_layout or arch == "resnet9")
    constants = constants if constants is not None else Constants()
    build = {"mlp": _mlp, "lenet5": _lenet5, "resnet9": _resnet9}[arch]
    try:  # a shape that does not fit the architecture surfaces as the model's own ModelError
        layers, input_shape, orient = build(modules, list(k), orientation, authors, where)
        beyond = int(sum(np.count_nonzero(np.abs(layer.weight) > constants.c) for layer in layers))
        provenance = {"import": {"source": where, "arch": arch, "layout": "pi2" if pi2_layout else "torch",
                                 "orientation": orient, "constants": "authors" if authors else "uniform",
                                 "layers": [m.name for m in weighted], "beyond_c": beyond}}
        return Pi2Network(tuple(layers), input_shape, constants, provenance=provenance,
                          rectified=authors and arch == "lenet5")
    except ModelError as exc:
        raise ImportFormatError(f"{where}: {exc}") from None


def _no_batchnorm(modules: Sequence[_Module], arch: str, where: str) -> list[_Module]:
    for m in modules:
        if m.kind == "batchnorm":
            leaf = "running_mean" if "running_mean" in m.raw else next(iter(m.raw))
            raise ImportFormatError(f"{where}: entry '{m.raw[leaf]}' is neither a weight nor a bias; {arch} networks "
                                    "hold only conv/linear weights (BatchNorms belong to resnet9)")
    return [m for m in modules if m.kind != "ignored"]


def _dense_layers(dense: Sequence[_Module], k: Sequence[int], orient: str, where: str,
                  s: Sequence[float | None]) -> list[Layer]:
    layers: list[Layer] = []
    for module, kk, ss in zip(dense, k, s):
        w = module.weight if orient == "student" else module.weight.T
        _check_k(kk, 2 * w.shape[0], module.name, where)
        layers.append(DenseLayer(np.ascontiguousarray(w, dtype=np.float64), int(kk), s=ss))
    return layers


Built = tuple[list[Layer], tuple[int, ...], str]  # layers, input shape, orientation


def _mlp(modules: Sequence[_Module], k: list[int], orientation: str, authors: bool, where: str) -> Built:
    weights = _no_batchnorm(modules, "mlp", where)
    bad = [m.name for m in weights if m.kind != "dense"]
    if bad:
        raise ImportFormatError(f"{where}: mlp needs 2-D weights; {bad} are not (use --arch lenet5 for conv nets)")
    orient = resolve_orientation([(m.name, m.weight) for m in weights], None, orientation, where)
    layers = _dense_layers(weights, k, orient, where, [None] * len(weights))
    return layers, (layers[0].n_inputs,), orient


def _lenet5(modules: Sequence[_Module], k: list[int], orientation: str, authors: bool, where: str) -> Built:
    weights = _no_batchnorm(modules, "lenet5", where)
    kinds = ["conv" if m.kind == "pi2conv" else m.kind for m in weights]
    if kinds != ["conv", "conv", "dense", "dense", "dense"]:
        raise ImportFormatError(f"{where}: lenet5 needs 2 conv then 3 linear weights, got "
                                f"{', '.join(f'{m.name} {tuple(m.weight.shape)}' for m in weights)}")
    convs, dense = weights[:2], weights[2:]
    fc1 = dense[0].weight.shape
    fan_in = [n for n in fc1 if n in LENET5_PADDING and sorted(fc1) == sorted((n, 120))]
    if not fan_in:
        raise ImportFormatError(f"{where}: lenet5 linear '{dense[0].name}' has shape {tuple(fc1)}; expected 120×400 "
                                "or 120×256 (teacher: out×in; 400 with conv1 padding 2, 256 without) or 400×120, "
                                "256×120 (student)")
    for module, (n, m) in zip(dense[1:], LENET5_DENSE):
        if sorted(module.weight.shape) != sorted((n, m)):
            raise ImportFormatError(f"{where}: lenet5 linear '{module.name}' has shape {tuple(module.weight.shape)}; "
                                    f"expected {m}×{n} (teacher) or {n}×{m} (student)")
    orient = resolve_orientation([(m.name, m.weight) for m in dense], fan_in[0], orientation, where)
    s = LENET5_AUTHORS_S if authors else (None,) * 5
    layers: list[Layer] = []
    shape: tuple[int, ...] = LENET5_INPUT
    for i, (module, expected) in enumerate(zip(convs, LENET5_CONVS)):
        w = conv_weight(module, expected[1], expected[2], where)
        if w.shape != expected:
            raise ImportFormatError(f"{where}: lenet5 conv '{module.name}' has shape {tuple(w.shape)}; "
                                    f"expected {expected}")
        _check_k(k[i], 2 * int(np.prod(w.shape[1:])), module.name, where)
        padding = LENET5_PADDING[fan_in[0]] if i == 0 else 0
        layer = ConvLayer(w, int(k[i]), shape, 1, padding, 2, s=s[i])
        layers.append(layer)
        shape = layer.out_shape
    layers += _dense_layers(dense, k[2:], orient, where, s[2:])
    return layers, LENET5_INPUT, orient


def _resnet9(modules: Sequence[_Module], k: list[int], orientation: str, authors: bool, where: str) -> Built:
    if not authors:
        raise ImportFormatError(f"{where}: resnet9 is imported with the authors' constants only (its BatchNorms "
                                "were trained on them); drop --constants uniform")
    modules = [m for m in modules if m.kind != "ignored"]
    kinds = ["conv" if m.kind == "pi2conv" else m.kind for m in modules]
    pattern = ["conv", "batchnorm"] * 8
    if kinds not in (pattern + ["dense"], pattern + ["batchnorm", "dense"]):
        raise ImportFormatError(f"{where}: resnet9 needs 8 (convolution, BatchNorm) pairs, then optionally a "
                                f"BatchNorm of the class scores, then the linear classifier; got "
                                f"{', '.join(f'{m.name} ({m.kind})' for m in modules)}")
    score_bn = modules[16] if len(modules) == 18 else None
    classifier = modules[-1]
    # ResNet9_100 (a BatchNorm of the scores) feeds +y to its BatchNorms, ResNet9_100_temp1 −y: see the module doc
    sign = -1.0 if score_bn is not None else 1.0
    layers: list[Layer] = []
    shape: tuple[int, ...] = RESNET9_INPUT
    for i in range(8):
        module, bn = modules[2 * i], modules[2 * i + 1]
        w = conv_weight(module, shape[0], RESNET9_KERNEL, where)
        if w.shape[1:] != (shape[0], RESNET9_KERNEL, RESNET9_KERNEL):
            raise ImportFormatError(f"{where}: resnet9 conv '{module.name}' has shape {tuple(w.shape)}; expected "
                                    f"Cout×{shape[0]}×3×3")
        _check_k(k[i], 2 * int(np.prod(w.shape[1:])), module.name, where)
        affine = _affine(bn, w.shape[0], sign, where)
        layer = ConvLayer(w, int(k[i]), shape, 1, 1, RESNET9_POOL.get(i, 1), s=RESNET9_CONV_S, affine=affine,
                          residual=RESNET9_RESIDUAL.get(i))
        layers.append(layer)
        shape = layer.out_shape
    n_in = int(np.prod(shape))
    orient = resolve_orientation([(classifier.name, classifier.weight)], n_in, orientation, where)
    dense = _dense_layers([classifier], k[8:], orient, where, [None])[0]
    if score_bn is None:
        dense = DenseLayer(dense.weight, dense.k, s=RESNET9_SCORE_S)
    else:
        dense = DenseLayer(dense.weight, dense.k, s=1.0, affine=_affine(score_bn, dense.n_neurons, sign, where))
    layers.append(dense)
    return layers, RESNET9_INPUT, orient


def _affine(bn: _Module, channels: int, sign: float, where: str) -> Affine:
    """The folded eval-mode BatchNorm, its scale times `sign` (see the module doc)."""
    mean = bn.tensors["running_mean"]
    if mean.size != channels:
        raise ImportFormatError(f"{where}: BatchNorm '{bn.name}' has {mean.size} channels; the layer before it has "
                                f"{channels}")
    weight = bn.tensors.get("weight", np.ones(channels))
    bias = bn.tensors.get("bias", np.zeros(channels))
    folded = Affine.from_batchnorm(weight, bias, mean, bn.tensors["running_var"], BN_EPS)
    return Affine(sign * folded.scale, folded.shift)


def _check_k(k: int, arrivals: int, name: str, where: str) -> None:
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 1 <= k <= arrivals):
        raise ImportFormatError(f"{where}: layer '{name}' has {arrivals} arrivals per neuron (2 × fan-in); "
                                f"its K must be an integer in 1..{arrivals}, got {k!r}")

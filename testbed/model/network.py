"""A π² network: π²_K layers, K per layer, constants, and its forward pass to class scores.

Layer l maps values x to times (differential encoding around T0), times to output times
(T⁺, T⁻) through its synapse delays and π²_K neurons, and then::

    y = T⁺ − T⁻;   hidden layers pass x' = ReLU(−s·y) (then optional max pooling);
    the last layer's class scores are −s·y, and the prediction is their argmax.

That is the uniform recipe of pi2-model.md. Networks such as the authors' LeNet-5 and ResNet-9
need per-layer output constants, all optional: s per layer (LeNet-5: 1 after conv1, 10 after the
rest), rectified class scores ReLU(−s·y), and, for ResNet-9, a per-channel affine map (a folded
BatchNorm) and residual additions. A hidden layer l then passes on::

    x' = pool( ReLU(affine_l(−s_l·y)) + x_r )     x_r: the input of layer r = residual_l (if any)

Dense weights are stored in×out (n×m), convolution weights Cout×Cin×kh×kw (as torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Union

import numpy as np

from testbed.errors import ModelError
from testbed.model.encoding import Constants, delays, encode
from testbed.model.layers import dense_times, im2col, max_pool


@dataclass(frozen=True, eq=False)
class Affine:
    """A per-channel map v ↦ scale·v + shift on a layer's −s·y: an eval-mode BatchNorm, folded.

    BatchNorm(v) = γ·(v − μ)/√(σ² + ε) + β, so scale = γ/√(σ² + ε) and shift = β − scale·μ
    (`from_batchnorm`). One entry per output channel of a conv layer, per neuron of a dense one.
    It is multiply-accumulate work the golden model does for networks such as ResNet-9; the
    kernel fabric has no such stage.
    """

    scale: np.ndarray
    shift: np.ndarray

    def __post_init__(self) -> None:
        for name in ("scale", "shift"):
            value = getattr(self, name)
            if not (isinstance(value, np.ndarray) and value.ndim == 1 and value.size
                    and np.issubdtype(value.dtype, np.floating) and np.isfinite(value).all()):
                raise ModelError(f"affine {name} must be a non-empty 1-D array of finite floats")
        if self.scale.shape != self.shift.shape:
            raise ModelError(f"affine scale has {self.scale.size} channels but shift has {self.shift.size}")

    @classmethod
    def from_batchnorm(cls, weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
                       eps: float) -> "Affine":
        """The affine map an eval-mode BatchNorm applies (running mean and variance, ε)."""
        scale = np.asarray(weight, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
        return cls(scale, np.asarray(bias, np.float64) - scale * np.asarray(mean, np.float64))

    @property
    def channels(self) -> int:
        return int(self.scale.size)

    def apply(self, v: np.ndarray) -> np.ndarray:
        """scale·v + shift with channels on axis 1 of v: (batch, C) or (batch, C, H, W)."""
        shape = (1, self.channels) + (1,) * (v.ndim - 2)
        return v * self.scale.reshape(shape) + self.shift.reshape(shape)


def _check_output(layer: "DenseLayer | ConvLayer", channels: int, kind: str) -> None:
    """The per-layer output constants shared by both layer types: s, affine, residual."""
    if layer.s is not None and not (isinstance(layer.s, (int, float)) and not isinstance(layer.s, bool)
                                    and np.isfinite(layer.s) and layer.s > 0):
        raise ModelError(f"{kind} layer s must be a finite number > 0 (or None: the network's s), got {layer.s!r}")
    if layer.affine is not None and layer.affine.channels != channels:
        raise ModelError(f"{kind} layer affine has {layer.affine.channels} channels; the layer has {channels}")
    if layer.residual is not None and not (isinstance(layer.residual, (int, np.integer))
                                           and not isinstance(layer.residual, bool) and layer.residual >= 0):
        raise ModelError(f"{kind} layer residual must be a layer index ≥ 0 (or None), got {layer.residual!r}")


@dataclass(frozen=True, eq=False)
class DenseLayer:
    """A π²_K dense layer; `weight` is (n_inputs, n_neurons).

    Output constants (all optional): `s` overrides the network's s for this layer, `affine` maps
    −s·y per neuron, and `residual` = r adds the input of layer r to this layer's rectified output.
    """

    weight: np.ndarray
    k: int
    s: float | None = None
    affine: Affine | None = None
    residual: int | None = None

    def __post_init__(self) -> None:
        if self.weight.ndim != 2:
            raise ModelError(f"dense weight must be 2-D (inputs × neurons), got shape {self.weight.shape}")
        _check_k(self.k, 2 * self.weight.shape[0], "dense")
        _check_output(self, self.n_neurons, "dense")

    @property
    def n_inputs(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n_neurons(self) -> int:
        return int(self.weight.shape[1])

    @property
    def conv_shape(self) -> tuple[int, ...]:
        """The output's shape before pooling (a dense layer never pools)."""
        return (self.n_neurons,)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.n_neurons,)


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """A π²_K convolution over inputs of shape `in_shape` (C, H, W), then `pool`×`pool` max pooling.

    `s`, `affine` (per output channel) and `residual` as for `DenseLayer`; pooling comes last.
    """

    weight: np.ndarray
    k: int
    in_shape: tuple[int, int, int]
    stride: int = 1
    padding: int = 0
    pool: int = 1
    s: float | None = None
    affine: Affine | None = None
    residual: int | None = None

    def __post_init__(self) -> None:
        if self.weight.ndim != 4:
            raise ModelError(f"conv weight must be 4-D (Cout × Cin × kh × kw), got shape {self.weight.shape}")
        if self.weight.shape[1] != self.in_shape[0]:
            raise ModelError(f"conv weight has {self.weight.shape[1]} input channels but the input has {self.in_shape[0]}")
        if self.stride < 1 or self.padding < 0 or self.pool < 1:
            raise ModelError(f"conv needs stride ≥ 1, padding ≥ 0, pool ≥ 1; got {self.stride}, {self.padding}, {self.pool}")
        _check_k(self.k, 2 * self.n_inputs, "conv")
        _check_output(self, int(self.weight.shape[0]), "conv")

    @property
    def n_inputs(self) -> int:
        """Fan-in of one neuron: Cin·kh·kw."""
        return int(np.prod(self.weight.shape[1:]))

    @property
    def conv_hw(self) -> tuple[int, int]:
        _, h, w = self.in_shape
        kh, kw = self.weight.shape[2:]
        return ((h + 2 * self.padding - kh) // self.stride + 1, (w + 2 * self.padding - kw) // self.stride + 1)

    @property
    def n_neurons(self) -> int:
        """Neurons: one per output channel and output position (before pooling)."""
        ho, wo = self.conv_hw
        return int(self.weight.shape[0] * ho * wo)

    @property
    def conv_shape(self) -> tuple[int, ...]:
        """The output's shape before pooling: (Cout, Ho, Wo)."""
        return (int(self.weight.shape[0]), *self.conv_hw)

    @property
    def out_shape(self) -> tuple[int, ...]:
        ho, wo = self.conv_hw
        return (int(self.weight.shape[0]), ho // self.pool, wo // self.pool)


Layer = Union[DenseLayer, ConvLayer]


def _check_k(k: int, arrivals: int, kind: str) -> None:
    if not (isinstance(k, (int, np.integer)) and 1 <= k <= arrivals):
        raise ModelError(f"{kind} layer K must be an integer in 1..{arrivals} (2 × fan-in), got {k!r}")


@dataclass(frozen=True)
class LayerTrace:
    """One layer's times for a batch: inputs (t⁺, t⁻), outputs (T⁺, T⁻), y, and the causal offset."""

    t_plus: np.ndarray
    t_minus: np.ndarray
    out_plus: np.ndarray
    out_minus: np.ndarray
    y: np.ndarray
    offset: np.ndarray  # per sample, max over neurons of z_[K] − T


@dataclass(frozen=True)
class Perturbation:
    """Hardware non-idealities applied at inference: timing jitter σ (model units) and packet loss.

    `keep` is the fraction of input events (packets) that arrive; lost ones never arrive.
    """

    jitter: float = 0.0
    keep: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.jitter >= 0:
            raise ModelError(f"jitter σ must be ≥ 0 model units, got {self.jitter}")
        if not 0 < self.keep <= 1:
            raise ModelError(f"keep fraction must be in (0, 1], got {self.keep}")


@dataclass(frozen=True, eq=False)
class Pi2Network:
    """A feed-forward π² network; `bits` quantises every synapse delay at inference.

    With `rectified` the class scores are ReLU(−s·y) of the last layer instead of −s·y: ties at
    zero happen, and the prediction, an argmax, takes the first index (as torch's does).
    """

    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    constants: Constants = field(default_factory=Constants)
    bits: int | None = None
    gamma: float | None = None  # None: π²_K neurons; a number: TEMP neurons with this γ
    provenance: Mapping[str, object] = field(default_factory=dict)
    rectified: bool = False

    def __post_init__(self) -> None:
        if not self.layers:
            raise ModelError("a network needs at least one layer")
        if not isinstance(self.rectified, bool):
            raise ModelError(f"rectified must be True or False, got {self.rectified!r}")
        shape = tuple(self.input_shape)
        inputs: list[tuple[int, ...]] = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, ConvLayer):
                if tuple(layer.in_shape) != shape:
                    raise ModelError(f"layer {i}: conv expects input shape {tuple(layer.in_shape)}, gets {shape}")
            elif int(np.prod(shape)) != layer.n_inputs:
                raise ModelError(f"layer {i}: dense expects {layer.n_inputs} inputs, gets {int(np.prod(shape))} {shape}")
            inputs.append(shape if isinstance(layer, ConvLayer) else (layer.n_inputs,))
            if layer.residual is not None:
                r = int(layer.residual)
                if i == len(self.layers) - 1 or r > i:
                    raise ModelError(f"layer {i}: residual = {r}; expected the index of this or an earlier layer, "
                                     "on a hidden layer")
                if int(np.prod(inputs[r])) != int(np.prod(layer.conv_shape)) or (
                        isinstance(layer, ConvLayer) and inputs[r] != layer.conv_shape):
                    raise ModelError(f"layer {i}: residual adds the input of layer {r}, shape {inputs[r]}, to an "
                                     f"output of shape {layer.conv_shape}")
            shape = layer.out_shape

    @property
    def k(self) -> tuple[int, ...]:
        return tuple(int(layer.k) for layer in self.layers)

    @property
    def scales(self) -> tuple[float, ...]:
        """s of every layer: its own, else the network's constant."""
        return tuple(float(self.constants.s if layer.s is None else layer.s) for layer in self.layers)

    @property
    def uniform(self) -> bool:
        """Whether the network is the uniform recipe of pi2-model.md: one s, linear scores, no
        per-layer affine maps or residual additions (what the kernel fabric computes)."""
        return (not self.rectified and set(self.scales) == {float(self.constants.s)}
                and all(layer.affine is None and layer.residual is None for layer in self.layers))

    @property
    def n_classes(self) -> int:
        return int(np.prod(self.layers[-1].out_shape))

    def with_bits(self, bits: int | None) -> "Pi2Network":
        return replace(self, bits=bits)

    def trace(self, x: np.ndarray, perturb: Perturbation | None = None) -> list[LayerTrace]:
        """Run a batch (batch, *input_shape) and return every layer's times."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1:] != tuple(self.input_shape):
            raise ModelError(f"input batch has sample shape {x.shape[1:]}, the network expects {tuple(self.input_shape)}")
        rng = np.random.default_rng(perturb.seed) if perturb is not None else None
        traces: list[LayerTrace] = []
        inputs: list[np.ndarray] = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, DenseLayer):
                x = x.reshape(len(x), -1)  # a dense layer over e.g. (C, H, W) sees it flat, channel-major
            inputs.append(x)
            traces.append(self._layer(layer, x, perturb, rng))
            if i < len(self.layers) - 1:
                x = self.hidden_output(i, traces[-1].y, inputs)
        return traces

    def hidden_output(self, i: int, y: np.ndarray, inputs: list[np.ndarray]) -> np.ndarray:
        """What hidden layer i passes on: ReLU(affine(−s·y)) + the residual layer's input, then pooled.

        `inputs` holds the value each layer so far was fed (for the residual addition)."""
        layer = self.layers[i]
        v = -self.scales[i] * y
        if layer.affine is not None:
            v = layer.affine.apply(v)
        x = np.maximum(v, 0.0)
        if layer.residual is not None:
            x = x + inputs[layer.residual].reshape(x.shape)
        if isinstance(layer, ConvLayer) and layer.pool > 1:
            x = max_pool(x, layer.pool)
        return x

    def output_scores(self, y: np.ndarray) -> np.ndarray:
        """Class scores (batch, classes) from the last layer's y: −s·y, its affine map, rectified if so."""
        v = -self.scales[-1] * y
        if self.layers[-1].affine is not None:
            v = self.layers[-1].affine.apply(v)
        v = v.reshape(len(v), -1)
        return np.maximum(v, 0.0) if self.rectified else v

    def scores(self, x: np.ndarray, perturb: Perturbation | None = None) -> np.ndarray:
        """Class scores of a batch, (batch, classes)."""
        return self.output_scores(self.trace(x, perturb)[-1].y)

    def predict(self, x: np.ndarray, perturb: Perturbation | None = None) -> np.ndarray:
        """The argmax of the scores; ties (e.g. rectified scores all 0) go to the first class, as in torch."""
        return self.scores(x, perturb).argmax(axis=1)

    def causal_offsets(self, x: np.ndarray) -> tuple[float, ...]:
        """M_K per layer: the largest z_[K] − T seen on this data (pi2-model.md, step 4)."""
        return tuple(float(t.offset.max()) for t in self.trace(x))

    def _layer(self, layer: Layer, x: np.ndarray, perturb: Perturbation | None,
               rng: np.random.Generator | None) -> LayerTrace:
        c = self.constants
        t_plus, t_minus = encode(x, c.t0)
        if perturb is not None and perturb.keep < 1:
            t_plus = np.where(rng.random(t_plus.shape) < perturb.keep, t_plus, np.inf)
            t_minus = np.where(rng.random(t_minus.shape) < perturb.keep, t_minus, np.inf)
        timeout = c.t0 * 2 + 2 * c.c + float(np.nanmax(np.where(np.isfinite(t_plus), t_plus, np.nan), initial=0.0))
        if isinstance(layer, DenseLayer):
            d_plus, d_minus = delays(layer.weight, c.c, self.bits)
            out_p, out_m, off = dense_times(t_plus, t_minus, d_plus, d_minus, layer.k, self.gamma, timeout, True)
        else:
            cout = layer.weight.shape[0]
            d_plus, d_minus = delays(layer.weight.reshape(cout, -1).T, c.c, self.bits)
            cols_p = im2col(t_plus, layer.weight.shape[2:], layer.stride, layer.padding, c.t0)
            cols_m = im2col(t_minus, layer.weight.shape[2:], layer.stride, layer.padding, c.t0)
            b, p, n = cols_p.shape
            out_p, out_m, off = dense_times(cols_p.reshape(b * p, n), cols_m.reshape(b * p, n),
                                            d_plus, d_minus, layer.k, self.gamma, timeout, True)
            ho, wo = layer.conv_hw
            out_p = out_p.reshape(b, ho, wo, cout).transpose(0, 3, 1, 2)
            out_m = out_m.reshape(b, ho, wo, cout).transpose(0, 3, 1, 2)
            off = off.reshape(b, p).max(axis=1)
        if perturb is not None and perturb.jitter > 0:
            out_p = out_p + rng.normal(0.0, perturb.jitter, out_p.shape)
            out_m = out_m + rng.normal(0.0, perturb.jitter, out_m.shape)
        return LayerTrace(t_plus, t_minus, out_p, out_m, out_p - out_m, off)

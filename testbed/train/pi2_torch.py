"""Differentiable π²_K layers in torch, computing exactly the numpy model's equations.

Forward (pi2-model.md; testbed.model.layers and network for the numpy reference)::

    t± = [T0 ± x]₊                       (lost events, with probability 1 − keep: t = +inf)
    d⁺ = clamp(w, −c, c) + c, d⁻ = 2c − d⁺   (optionally n-bit, straight-through)
    z⁺ = {t⁺ + d⁺, t⁻ + d⁻},  z⁻ = {t⁺ + d⁻, t⁻ + d⁺}
    T± = mean of the K earliest of z±    (finite ones; none at all: the time-out)
    T± += N(0, σ²) jitter;  y = T⁺ − T⁻
    hidden: x' = ReLU(−s_l·y), then max pooling;  last layer: scores −s·y (ReLU(−s·y) if rectified)

s_l is each layer's own s (testbed.model.network). Affine maps and residual additions (ResNet-9)
are evaluated by the numpy model only; this module refuses them.

testbed.train.k_earliest selects the K earliest (compiled, without the arrival tensor); its
backward sends the mean's 1/K to exactly the selected arrivals and 0 to the rest, which is the
selection gradient the training recipe prescribes.
Straight-through quantisation: the forward uses quantised delays, the backward the float ones.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from testbed.errors import TrainingError
from testbed.model.encoding import Constants, delay_step
from testbed.model.network import ConvLayer, DenseLayer, Pi2Network
from testbed.train.k_earliest import k_earliest_mean


def encode(x: torch.Tensor, t0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(t⁺, t⁻) = ([T0 + x]₊, [T0 − x]₊)."""
    return F.relu(t0 + x), F.relu(t0 - x)


def delays(weight: torch.Tensor, c: float, bits: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(d⁺, d⁻) of a weight tensor; with `bits`, rounded to 2ⁿ levels on [0, 2c] straight-through."""
    d_plus = torch.clamp(weight, -c, c) + c
    if bits is not None:
        step = delay_step(c, bits)
        levels = torch.clamp(torch.round(d_plus / step), 0, 2**bits - 1) * step
        d_plus = d_plus + (levels - d_plus).detach()
    return d_plus, 2.0 * c - d_plus


def dense_times(t_plus: torch.Tensor, t_minus: torch.Tensor, d_plus: torch.Tensor, d_minus: torch.Tensor,
                k: int, timeout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Output times (T⁺, T⁻), each (batch, m), for input times (batch, n) and delays (n, m).

    z⁺ pairs (t⁺, t⁻) with (d⁺, d⁻) and z⁻ with (d⁻, d⁺).
    """
    t_all = torch.cat([t_plus, t_minus], dim=1)
    return (k_earliest_mean(t_all, torch.cat([d_plus, d_minus], dim=0), k, timeout),
            k_earliest_mean(t_all, torch.cat([d_minus, d_plus], dim=0), k, timeout))


class Pi2Layer(nn.Module):
    """One π²_K layer (dense, or convolution + pooling) with its weight as a parameter."""

    def __init__(self, layer: DenseLayer | ConvLayer, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(np.asarray(layer.weight), dtype=dtype).clone())
        self.k = int(layer.k)
        self.conv = isinstance(layer, ConvLayer)
        self.stride, self.padding, self.pool = (layer.stride, layer.padding, layer.pool) if self.conv else (1, 0, 1)

    def times(self, t_plus: torch.Tensor, t_minus: torch.Tensor, c: Constants, bits: int | None,
              timeout: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(T⁺, T⁻) for the layer's input times: (batch, m) dense, (batch, Cout, Ho, Wo) conv."""
        if not self.conv:
            d_plus, d_minus = delays(self.weight, c.c, bits)
            return dense_times(t_plus, t_minus, d_plus, d_minus, self.k, timeout)
        cout, _, kh, kw = self.weight.shape
        d_plus, d_minus = delays(self.weight.reshape(cout, -1).T, c.c, bits)
        # padding is the value 0, whose events are both at T0; unfold is channel-major like im2col
        cols = [F.unfold(F.pad(t, (self.padding,) * 4, value=c.t0), (kh, kw), stride=self.stride)
                for t in (t_plus, t_minus)]
        b, n, positions = cols[0].shape
        flat = [col.transpose(1, 2).reshape(b * positions, n) for col in cols]
        out_p, out_m = dense_times(flat[0], flat[1], d_plus, d_minus, self.k, timeout)
        h, w = t_plus.shape[2] + 2 * self.padding, t_plus.shape[3] + 2 * self.padding
        shape = (b, cout, (h - kh) // self.stride + 1, (w - kw) // self.stride + 1)
        return (out_p.reshape(b, positions, cout).transpose(1, 2).reshape(shape),
                out_m.reshape(b, positions, cout).transpose(1, 2).reshape(shape))


class Pi2TorchNetwork(nn.Module):
    """A π² network in torch: the class scores of the last layer, with optional hardware perturbations.

    `bits` quantises delays (straight-through), `jitter` adds N(0, σ²) to every layer's output
    times, and `keep` < 1 loses each input event of every layer with probability 1 − keep.
    """

    def __init__(self, net: Pi2Network, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if net.gamma is not None:
            raise TrainingError(f"TEMP neurons (gamma={net.gamma}) are not trainable here; train π²_K neurons")
        if any(layer.affine is not None or layer.residual is not None for layer in net.layers):
            raise TrainingError("networks with affine (BatchNorm) or residual layers are not trainable here")
        self.layers = nn.ModuleList(Pi2Layer(layer, dtype) for layer in net.layers)
        self.input_shape = tuple(net.input_shape)
        self.constants = net.constants
        self.scales = net.scales
        self.rectified = net.rectified
        self.dtype = dtype
        self.bits: int | None = net.bits
        self.jitter = 0.0
        self.keep = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (batch, classes) of a batch of normalised inputs."""
        x = x.to(self.dtype).reshape(len(x), *self.input_shape)
        y = self._y(self.layers[0], x)
        for s, previous, layer in zip(self.scales, self.layers, self.layers[1:]):
            x = F.relu(-s * y)
            if previous.conv and previous.pool > 1:
                x = F.max_pool2d(x, previous.pool)
            if not layer.conv:
                x = x.reshape(len(x), -1)
            y = self._y(layer, x)
        scores = -self.scales[-1] * y.reshape(len(y), -1)
        return F.relu(scores) if self.rectified else scores

    def _y(self, layer: Pi2Layer, x: torch.Tensor) -> torch.Tensor:
        """y = T⁺ − T⁻ of one layer, with this network's perturbations."""
        c = self.constants
        t_plus, t_minus = encode(x, c.t0)
        if self.keep < 1:
            t_plus = torch.where(torch.rand_like(t_plus) < self.keep, t_plus, torch.inf)
            t_minus = torch.where(torch.rand_like(t_minus) < self.keep, t_minus, torch.inf)
        finite = t_plus.detach()[torch.isfinite(t_plus)]
        # the numpy model's time-out: 2·T0 + 2c + the latest finite t⁺ of this batch (at least 0)
        timeout = 2 * c.t0 + 2 * c.c + max(float(finite.max()) if finite.numel() else 0.0, 0.0)
        out_p, out_m = layer.times(t_plus, t_minus, c, self.bits, timeout)
        if self.jitter > 0:
            out_p = out_p + self.jitter * torch.randn_like(out_p)
            out_m = out_m + self.jitter * torch.randn_like(out_m)
        return out_p - out_m

    def to_numpy(self, template: Pi2Network, provenance: dict[str, object] | None = None) -> Pi2Network:
        """The numpy network with this module's current weights (topology and constants of `template`)."""
        layers = tuple(replace(layer, weight=module.weight.detach().cpu().double().numpy().copy())
                       for layer, module in zip(template.layers, self.layers))
        return replace(template, layers=layers, bits=self.bits,
                       provenance=dict(template.provenance) if provenance is None else provenance)

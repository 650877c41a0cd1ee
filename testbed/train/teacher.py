"""Conventional multiply-accumulate teachers without biases (a π² neuron has no bias), and their training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from testbed.model.network import ConvLayer, DenseLayer, Pi2Network
from testbed.model.torch_import import LENET5_AUTHORS_S
from testbed.train.arch import Arch
from testbed.train.loop import EpochHook, fit
from testbed.train.schedule import Schedule



def build_teacher(arch: Arch) -> nn.Sequential:
    """The ReLU teacher of `arch`: an MLP, or LeNet-5 (conv → ReLU → max-pool twice, then 120-84-10)."""
    # nn.Sequential names its weights 0.weight, 3.weight, …: pi2 import reads those as well
    if arch.kind == "mlp":
        modules: list[nn.Module] = [nn.Flatten()]
        for i, (n_in, n_out) in enumerate(zip(arch.widths[:-1], arch.widths[1:])):
            if i > 0:
                modules.append(nn.ReLU())
            modules.append(nn.Linear(n_in, n_out, bias=False))
        return nn.Sequential(*modules)
    flat = 16 * ((8 + arch.padding) // 2) ** 2  # 28 + 2p − 4 → pool → − 4 → pool: 400 (p = 2) or 256 (p = 0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=arch.padding, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(flat, 120, bias=False), nn.ReLU(), nn.Linear(120, 84, bias=False), nn.ReLU(),
        nn.Linear(84, 10, bias=False))


def student_template(teacher: nn.Sequential, arch: Arch, k: tuple[int, ...], authors: bool = False) -> Pi2Network:
    """The π² network of the teacher's topology holding the teacher's weights.

    nn.Linear keeps its weight out×in while a π² dense layer is in×out, so dense weights are
    transposed; conv weights are Cout×Cin×kh×kw in both. With `authors` (LeNets), the
    authors' LeNet5_K constants: s = 1 after conv1 and 10 after the rest, rectified scores
    (testbed.model.torch_import.LENET5_AUTHORS_S).
    """
    modules = list(teacher)
    weighted = [i for i, m in enumerate(modules) if isinstance(m, (nn.Linear, nn.Conv2d))]
    layers: list[DenseLayer | ConvLayer] = []
    shape = arch.input_shape
    for position, k_layer in zip(weighted, k):
        module = modules[position]
        weight = module.weight.detach().cpu().double().numpy().copy()
        if isinstance(module, nn.Linear):
            layer: DenseLayer | ConvLayer = DenseLayer(weight.T.copy(), k_layer)
        else:
            # the teacher pools after its ReLU; π² pools x' = ReLU(−s·y) the same way
            after = modules[position + 2] if position + 2 < len(modules) else None
            pool = after.kernel_size if isinstance(after, nn.MaxPool2d) else 1
            layer = ConvLayer(weight, k_layer, tuple(shape), module.stride[0], module.padding[0], int(pool))
        layers.append(layer)
        shape = layer.out_shape
    if not authors:
        return Pi2Network(tuple(layers), arch.input_shape)
    layers = [replace(layer, s=s) for layer, s in zip(layers, LENET5_AUTHORS_S)]
    return Pi2Network(tuple(layers), arch.input_shape, rectified=True)


def train_teacher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int,
                  generator: torch.Generator, on_epoch: EpochHook | None = None,
                  schedule: Schedule = Schedule()) -> None:
    """Cross-entropy training on shuffled mini-batches (order from `generator`)."""
    fit(model, len(x), lambda batch: F.cross_entropy(model(x[batch]), y[batch]), epochs, lr, batch_size, generator,
        on_epoch, schedule)


@torch.no_grad()
def teacher_accuracy(model: nn.Module, x: torch.Tensor, y: np.ndarray, batch_size: int = 1000) -> float:
    """Test accuracy of the teacher (%)."""
    predictions = torch.cat([model(chunk).argmax(dim=1) for chunk in x.split(batch_size)]).numpy()
    return float(np.mean(predictions == y) * 100)

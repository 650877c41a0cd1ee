"""The training loop teachers and π² students share: Adam(ax), a per-epoch schedule, shuffled mini-batches."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from testbed.train.schedule import Schedule

EpochHook = Callable[[int, float], None]  # (epoch index from 0, mean training loss)
OPTIMISERS = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}  # testbed.train.schedule.OPTIMISERS


def fit(model: nn.Module, samples: int, batch_loss: Callable[[torch.Tensor], torch.Tensor], epochs: int, lr: float,
        batch_size: int, generator: torch.Generator, on_epoch: EpochHook | None = None,
        schedule: Schedule = Schedule()) -> None:
    """Minimise `batch_loss(indices)` over `epochs` passes of shuffled mini-batches (order from `generator`)."""
    optimiser = OPTIMISERS[schedule.optimiser](model.parameters(), lr=lr)
    scheduler: torch.optim.lr_scheduler.LRScheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(epochs, 1)) if schedule.decay is None
        else torch.optim.lr_scheduler.ExponentialLR(optimiser, schedule.decay))
    model.train()
    for epoch in range(epochs):
        total = 0.0
        for batch in torch.randperm(samples, generator=generator).split(batch_size):
            loss = batch_loss(batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, total / samples)
    model.eval()

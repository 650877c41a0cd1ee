"""The shared training loop: each optimiser under each learning-rate schedule."""

from __future__ import annotations

import math

import pytest

from testbed.errors import TrainingError
from testbed.train.schedule import Schedule

torch = pytest.importorskip("torch")
from testbed.train.loop import fit  # noqa: E402

pytestmark = pytest.mark.torch


def _travel(schedule: Schedule, epochs: int, lr: float = 0.01) -> float:
    """How far one parameter moves under a constant gradient of 1 (4 samples, 2 steps per epoch).

    Adam and Adamax both normalise a constant gradient to a step of exactly the current lr
    (up to their ε), so the distance is lr · 2 · Σ over epochs of the schedule's factor.
    """
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    fit(model, 4, lambda batch: model.weight.sum() * 1.0, epochs, lr, 2, torch.Generator().manual_seed(0),
        schedule=schedule)
    return -float(model.weight.detach())


@pytest.mark.parametrize("optimiser", ["adam", "adamax"])
def test_per_epoch_decay_multiplies_the_lr_after_every_epoch(optimiser):
    assert _travel(Schedule(optimiser, 0.5), 3) == pytest.approx(0.01 * 2 * (1 + 0.5 + 0.25), rel=1e-5)


@pytest.mark.parametrize("optimiser", ["adam", "adamax"])
def test_without_a_decay_the_lr_follows_a_cosine_to_zero(optimiser):
    cosine = sum(0.5 * (1 + math.cos(math.pi * e / 3)) for e in range(3))
    assert _travel(Schedule(optimiser), 3) == pytest.approx(0.01 * 2 * cosine, rel=1e-5)


def test_adam_and_adamax_are_different_optimisers():
    """A gradient that changes size: Adam divides by its running RMS, Adamax by its running max."""
    runs = []
    for optimiser in ("adam", "adamax"):
        model = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(0.0)
        fit(model, 4, lambda batch: model.weight.sum() * float(batch.sum() + 1), 1, 0.01, 1,
            torch.Generator().manual_seed(0), schedule=Schedule(optimiser, 1.0))
        runs.append(float(model.weight.detach()))
    assert runs[0] != pytest.approx(runs[1], rel=1e-3)


@pytest.mark.parametrize("optimiser, decay", [("sgd", None), ("adam", 0.0), ("adam", 1.5)])
def test_bad_schedule_is_explained(optimiser, decay):
    with pytest.raises(TrainingError, match="--optimizer|--lr-decay"):
        Schedule(optimiser, decay)

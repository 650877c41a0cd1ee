"""How a training stage steps its weights (optimiser and learning-rate schedule); no torch, so a bad
choice fails before torch loads."""

from __future__ import annotations

from dataclasses import dataclass

from testbed.errors import TrainingError

OPTIMISERS = ("adam", "adamax")


@dataclass(frozen=True)
class Schedule:
    """Adam or Adamax, with the learning rate annealed to 0 along a cosine over the stage (`decay`
    None) or multiplied by `decay` after every epoch. The authors train LeNet5_K, teacher and π²
    student, with Adamax and lr × 0.9 per epoch."""

    optimiser: str = "adam"
    decay: float | None = None

    def __post_init__(self) -> None:
        if self.optimiser not in OPTIMISERS:
            raise TrainingError(f"--optimizer must be one of {', '.join(OPTIMISERS)}, got {self.optimiser!r}")
        if self.decay is not None and not 0 < self.decay <= 1:
            raise TrainingError(f"--lr-decay must be in (0, 1], got {self.decay}")

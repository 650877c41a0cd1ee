"""Knowledge distillation of a MAC teacher into a π² student, and hardware-aware fine-tuning.

Loss (pi2-model.md, training step 3), with z the logits and the student's logits its scores −s·y::

    L = α·T²·KL(softmax(z_teacher/T) ‖ softmax(z_student/T)) + (1 − α)·CE(z_student, y),  T = 5, α = 0.5

The π² scores −s·y of a student holding the copied teacher weights are much smaller than the
teacher's logits (MNIST 784-50-10, K = [140, 16]: spread 1.2 against 6.9), so matching the soft
targets as they are first drags the student away from the teacher's function (it drops ≈2 pt on
its first epoch). `logit_scale` λ multiplies the student's scores inside the loss only
(z_student = λ·(−s·y)); the network, its scores and its argmax are unchanged, and λ = 1 is the
formula above. `calibrated_logit_scale` picks λ so the copied student's score spread matches the
teacher's logit spread.

Fine-tuning reuses the loop with the student's perturbations switched on (n-bit delays with a
straight-through gradient, output-time jitter σ, input-event loss), so it learns weights that
survive them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from testbed.errors import TrainingError
from testbed.train.pi2_torch import Pi2TorchNetwork
from testbed.train.loop import EpochHook, fit
from testbed.train.schedule import Schedule



@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of one distillation run (temperature T, mix α, optimiser and lr schedule).

    α = 0 is plain cross-entropy on the labels (λ·scores as logits): the authors train their π²
    LeNet5_K that way, from the copied teacher, with no soft targets.
    """

    epochs: int
    lr: float
    batch_size: int
    temperature: float = 5.0
    alpha: float = 0.5
    logit_scale: float = 1.0  # λ: the loss sees λ·scores of the student (1: the spec's formula)
    schedule: Schedule = Schedule()

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise TrainingError(f"distillation needs epochs ≥ 0, batch size ≥ 1, lr > 0; got "
                                f"{self.epochs}, {self.batch_size}, {self.lr}")
        if not (self.temperature > 0 and 0 <= self.alpha <= 1):
            raise TrainingError(f"distillation needs T > 0 and α in [0, 1]; got T={self.temperature}, α={self.alpha}")
        if not (self.logit_scale > 0 and math.isfinite(self.logit_scale)):
            raise TrainingError(f"distillation needs a finite logit scale λ > 0, got {self.logit_scale}")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """α·T²·KL(p_teacher ‖ p_student) at temperature T plus (1 − α)·CE(student, labels), batch means."""
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1), reduction="batchmean", log_target=True)
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The teacher's logits on every sample (computed once: the teacher is frozen)."""
    teacher.eval()
    return torch.cat([teacher(chunk) for chunk in x.split(batch_size)]).to(torch.float32)


@torch.no_grad()
def calibrated_logit_scale(student: Pi2TorchNetwork, targets: torch.Tensor, x: torch.Tensor,
                           batch_size: int = 1000) -> float:
    """λ = std(teacher logits) / std(student scores) over the samples `x` (their logits `targets`)."""
    student.eval()
    scores = torch.cat([student(chunk) for chunk in x.split(batch_size)])
    spread = float(scores.std())
    if not spread > 0:
        raise TrainingError("the student's scores are all equal on the calibration samples; cannot calibrate the "
                            "logit scale (pass a fixed one)")
    return float(targets.std()) / spread


def distill(student: Pi2TorchNetwork, targets: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
            config: DistillConfig, generator: torch.Generator, on_epoch: EpochHook | None = None) -> None:
    """Train `student` towards the teacher logits `targets` (and the labels) with its current perturbations."""
    if config.epochs == 0:
        return

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        return distillation_loss(config.logit_scale * student(x[batch]), targets[batch], y[batch],
                                 config.temperature, config.alpha)

    fit(student, len(x), batch_loss, config.epochs, config.lr, config.batch_size, generator, on_epoch, config.schedule)

"""The whole training recipe behind `pi2 train`: teacher → π² student → hardware fine-tuning.

1. Train a bias-free MAC teacher (cross-entropy; Adam or Adamax, cosine or per-epoch decay).
2. Copy its weights into a π² student of the same topology (testbed.train.teacher.student_template).
3. Distil (testbed.train.distill): KL to the teacher at T = 5 plus cross-entropy, mixed by `alpha`
   (0.5; 0: cross-entropy on the labels alone, the authors' LeNet5_K recipe), with the student's
   scores multiplied by `logit_scale` in the loss (None: calibrated to the teacher's spread).
4. If asked for n-bit delays, jitter σ or event loss, fine-tune with those switched on. Before an
   n-bit fine-tune the network is first range-scaled (`range_scale`): inputs and every weight times
   α = min(T0 / max|x|, c / w₀), w₀ a high percentile (`range_percentile`, 99.9) of the first layer's
   |w|. Without clipping a π² layer is homogeneous — the K earliest of T0 + c ± αx ± αw are the same arrivals,
   so y scales by α, and so do the next layer's inputs ReLU(−s·αy) — so the float network keeps its
   argmax, while its weights now span the delay grid: MNIST 784-50-10's first-layer weights (median
   |w| 0.06) otherwise all round to the grid's smallest levels ±0.2 (4 bits: step 2c/15 = 0.4, no
   zero level). α goes into the stored input normalisation, so `pi2 eval` and the fabric feed the
   network what it was tuned on.

Every π² accuracy is measured with the numpy model (Pi2Network.predict), so what training reports
is what `pi2 eval` and the fabric compute. Runs are deterministic for a given seed and thread count:
seeded torch, deterministic algorithms, a fixed number of CPU threads.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from testbed.errors import TrainingError
from testbed.model.encoding import quantise_weight
from testbed.model.network import Perturbation, Pi2Network
from testbed.train import require_torch
from testbed.train.arch import Arch, parse_arch, parse_k
from testbed.train.datasets import Dataset, Normalisation, load_dataset
from testbed.train.evaluate import numpy_accuracy
from testbed.train.schedule import Schedule

# (stage, epoch index from 0, epochs in the stage, mean training loss); stages: teacher, distil, fine-tune
ProgressHook = Callable[[str, int, int, float], None]
CALIBRATION_SAMPLES = 5000  # first training samples on which a calibrated logit scale is measured


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; with `seed` and `threads` fixed the result is reproducible."""

    dataset: str
    arch: str
    k: str
    bits: int | None = None
    jitter: float = 0.0      # σ of the Gaussian output-time jitter in fine-tuning (model units)
    event_loss: float = 0.0  # fraction of input events lost in fine-tuning, each at every neuron
    teacher_epochs: int = 100
    epochs: int = 100        # distillation epochs
    finetune_epochs: int = 40
    teacher_lr: float = 3e-3
    lr: float = 1e-2
    finetune_lr: float = 3e-3
    batch_size: int = 32
    logit_scale: float | None = 1.0  # λ on the student's scores in the loss; None: calibrate (distill.py)
    constants: str = "uniform"  # or "authors": LeNet5_K's per-layer s and rectified scores (teacher.student_template)
    rescale: bool = True     # range-scale before an n-bit fine-tune (module doc)
    range_percentile: float = 99.9  # percentile of the first layer's |w| the range scale maps to c
    alpha: float = 0.5       # weight of the soft-target term in the distillation loss (distill.py)
    optimiser: str = "adam"  # or "adamax"; every stage (testbed.train.schedule)
    lr_decay: float | None = None  # lr × this after every epoch of every stage; None: cosine to 0
    seed: int = 0
    threads: int = 1
    command: str | None = None  # the command line that ran this, stored in provenance

    def __post_init__(self) -> None:
        if self.bits is not None and not 1 <= self.bits <= 16:
            raise TrainingError(f"--bits must be in 1..16, got {self.bits}")
        if not self.jitter >= 0:
            raise TrainingError(f"--jitter σ must be ≥ 0 model units, got {self.jitter}")
        if not 0 <= self.event_loss < 1:
            raise TrainingError(f"--event-loss must be a fraction in [0, 1), got {self.event_loss}")
        if min(self.teacher_epochs, self.epochs, self.finetune_epochs) < 0 or self.batch_size < 1 or self.threads < 1:
            raise TrainingError("epochs must be ≥ 0, and batch size and threads ≥ 1")
        if self.logit_scale is not None and not (self.logit_scale > 0 and np.isfinite(self.logit_scale)):
            raise TrainingError(f"--logit-scale must be a finite number > 0 (or auto), got {self.logit_scale}")
        if self.constants not in ("uniform", "authors"):
            raise TrainingError(f"--constants must be uniform or authors, got {self.constants!r}")
        if not 0 < self.range_percentile <= 100:
            raise TrainingError(f"--range-percentile must be in (0, 100], got {self.range_percentile}")
        if not 0 <= self.alpha <= 1:
            raise TrainingError(f"--alpha must be in [0, 1], got {self.alpha}")
        Schedule(self.optimiser, self.lr_decay)  # raises on a bad optimiser or decay

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.optimiser, self.lr_decay)

    @property
    def perturbed(self) -> bool:
        return self.bits is not None or self.jitter > 0 or self.event_loss > 0


def _inputs(dataset: Dataset, arch: Arch) -> tuple[np.ndarray, np.ndarray]:
    """Normalised train and test inputs shaped for `arch`."""
    size = int(np.prod(arch.input_shape))
    if int(np.prod(dataset.sample_shape)) != size:
        raise TrainingError(f"{arch} takes {arch.input_shape} inputs but data set {dataset.name} has samples "
                            f"of shape {dataset.sample_shape}")
    if arch.n_classes != dataset.n_classes:
        raise TrainingError(f"{arch} has {arch.n_classes} outputs but data set {dataset.name} has {dataset.n_classes} classes")
    norm = dataset.normalisation
    return (norm.apply(dataset.x_train).reshape(-1, *arch.input_shape),
            norm.apply(dataset.x_test).reshape(-1, *arch.input_shape))


def train_network(config: TrainConfig, progress: ProgressHook | None = None) -> tuple[Pi2Network, dict[str, Any]]:
    """Train a teacher and distil it into a π² network; returns the network and a report.

    The network carries provenance (data set and normalisation, accuracies, seed, command,
    torch version, date) ready for testbed.model.netfile.save_network.
    """
    arch = parse_arch(config.arch)
    k = parse_k(config.k, arch)
    if config.constants == "authors" and arch.kind == "mlp":
        raise TrainingError(f"--constants authors are LeNet5_K's per-layer constants; {arch} has the uniform ones")
    dataset = load_dataset(config.dataset)
    x_train, x_test = _inputs(dataset, arch)
    torch = require_torch()
    from testbed.train.distill import DistillConfig, calibrated_logit_scale, distill, teacher_logits
    from testbed.train.pi2_torch import Pi2TorchNetwork
    from testbed.train.teacher import build_teacher, student_template, teacher_accuracy, train_teacher

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        xt = torch.as_tensor(x_train, dtype=torch.float32)
        yt = torch.as_tensor(dataset.y_train, dtype=torch.long)

        def hook(stage: str, epochs: int) -> Callable[[int, float], None] | None:
            return None if progress is None else lambda epoch, loss: progress(stage, epoch, epochs, loss)

        started = time.perf_counter()
        teacher = build_teacher(arch)
        train_teacher(teacher, xt, yt, config.teacher_epochs, config.teacher_lr, config.batch_size, generator,
                      hook("teacher", config.teacher_epochs), config.schedule)
        teacher_s = time.perf_counter() - started
        accuracy: dict[str, float | None] = {
            "teacher": teacher_accuracy(teacher, torch.as_tensor(x_test, dtype=torch.float32), dataset.y_test)}

        template = student_template(teacher, arch, k, config.constants == "authors")
        student = Pi2TorchNetwork(template)
        targets = teacher_logits(teacher, xt)
        scale = (calibrated_logit_scale(student, targets[:CALIBRATION_SAMPLES], xt[:CALIBRATION_SAMPLES])
                 if config.logit_scale is None else config.logit_scale)
        distill(student, targets, xt, yt, DistillConfig(config.epochs, config.lr, config.batch_size, alpha=config.alpha,
                                                        logit_scale=scale, schedule=config.schedule),
                generator, hook("distil", config.epochs))
        accuracy["student"] = numpy_accuracy(student.to_numpy(template), x_test, dataset.y_test)
        distil_s = time.perf_counter() - started - teacher_s

        norm, alpha = dataset.normalisation, 1.0
        if config.bits is not None and config.rescale:
            alpha = range_scale(student.to_numpy(template), x_train, config.range_percentile)
            with torch.no_grad():
                for layer in student.layers:
                    layer.weight.mul_(alpha)
            xt, x_test, norm = xt * alpha, x_test * alpha, norm.scaled(alpha)
        if config.perturbed:
            student.bits, student.jitter, student.keep = config.bits, config.jitter, 1.0 - config.event_loss
            # λ/α: the loss sees the scores it saw before the range scale multiplied them by α
            distill(student, targets, xt, yt, DistillConfig(config.finetune_epochs, config.finetune_lr,
                                                            config.batch_size, alpha=config.alpha,
                                                            logit_scale=scale / alpha, schedule=config.schedule),
                    generator, hook("fine-tune", config.finetune_epochs))
            student.jitter, student.keep = 0.0, 1.0
        net = student.to_numpy(template)
        if config.bits is not None:  # store the delays themselves on the n-bit grid
            net = replace(net, layers=tuple(replace(layer, weight=quantise_weight(layer.weight, net.constants.c,
                                                                                  config.bits))
                                            for layer in net.layers))
        accuracy["quantised"] = None if config.bits is None else numpy_accuracy(net, x_test, dataset.y_test)
        if config.jitter > 0 or config.event_loss > 0:
            if config.bits is None:  # the fine-tuned weights, clean
                accuracy["fine_tuned"] = numpy_accuracy(net, x_test, dataset.y_test)
            perturb = Perturbation(config.jitter, 1.0 - config.event_loss, config.seed)
            accuracy["perturbed"] = numpy_accuracy(net, x_test, dataset.y_test, perturb)
        total_s = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)

    provenance = _provenance(config, arch, k, dataset.name, norm, accuracy, torch.__version__, scale, alpha)
    report = {
        "dataset": dataset.name, "arch": str(arch), "k": list(k), "bits": config.bits, "jitter": config.jitter,
        "event_loss": config.event_loss, "seed": config.seed, "threads": config.threads, "logit_scale": scale,
        "range_scale": alpha, "constants": config.constants,
        "accuracy": accuracy,
        "train_samples": len(x_train), "test_samples": len(x_test),
        "seconds": {"teacher": teacher_s, "distil": distil_s, "total": total_s},
    }
    return replace(net, gamma=None, provenance=provenance), report


def range_scale(net: Pi2Network, x: np.ndarray, percentile: float = 99.9) -> float:
    """α = min(T0 / max|x|, c / w₀) ≥ 1, w₀ the `percentile` percentile of the first layer's |w|:
    how far inputs and weights can be scaled up with no input event clipped at 0 ([T0 − αx]₊) and
    at most (100 − percentile) % of the first layer's weights clamped, so that layer, whose many small
    weights the grid resolves worst, stays (nearly) exact; one outlier weight no longer holds α down.
    Later layers' largest weights and hidden values may clamp or clip: the fine-tune learns through
    that. 1 if a bound is already reached. On MNIST 784-50-10 4-bit a larger α kept more accuracy
    (bench/train_mnist.py: α 1.37, 1.61, 2.12 gave 95.30, 96.50, 96.86 %)."""
    c = net.constants
    wide = float(np.percentile(np.abs(net.layers[0].weight), percentile))
    largest = float(np.abs(x).max())
    alpha = min(c.t0 / largest if largest > 0 else np.inf, c.c / wide if wide > 0 else np.inf)
    return float(alpha) if np.isfinite(alpha) and alpha > 1 else 1.0


def _provenance(config: TrainConfig, arch: Arch, k: tuple[int, ...], name: str, norm: Normalisation,
                accuracy: dict[str, float | None], torch_version: str, logit_scale: float,
                alpha: float) -> dict[str, Any]:
    training = {key: value for key, value in asdict(config).items() if key not in ("command", "dataset", "arch", "k")}
    training["logit_scale"] = logit_scale  # the λ used (calibrated when the config says None)
    training["range_scale"] = alpha  # the α inputs and weights were scaled by before the n-bit fine-tune
    return {
        "dataset": {"name": name, **norm.record()},
        "split": "test",
        "arch": str(arch),
        "k": list(k),
        "accuracy": {key: None if value is None else round(value, 4) for key, value in accuracy.items()},
        "seed": config.seed,
        "command": config.command,
        "training": training,
        "torch": torch_version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

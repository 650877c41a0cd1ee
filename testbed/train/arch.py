"""Architecture and K strings of `pi2 train` (no torch: bad input fails before torch loads).

``mlp:64-16-10`` is a bias-free MLP with those layer widths (input first); ``lenet5`` is LeNet-5
for 1×28×28 inputs: conv 6@5×5 pad 2, pool 2, conv 16@5×5, pool 2, dense 400-120-84-10;
``lenet5k`` is the authors' LeNet5_K topology: the same without conv1's padding, dense 256-120-84-10.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from testbed.errors import TrainingError

ARCH_HELP = "'mlp:IN-H1-...-OUT' (e.g. mlp:64-16-10), 'lenet5' or 'lenet5k' (1×28×28 inputs)"
LENETS = {"lenet5": 2, "lenet5k": 0}  # name -> conv1's padding


@dataclass(frozen=True)
class Arch:
    """A teacher/student topology: `kind` 'mlp' with `widths`, or one of `LENETS`."""

    kind: str
    widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "mlp":
            if len(self.widths) < 2 or min(self.widths) < 1:
                raise TrainingError(f"mlp widths must be ≥ 2 positive integers, got {self.widths}")
        elif self.kind not in LENETS or self.widths:
            raise TrainingError(f"unknown architecture {self.kind!r}; expected {ARCH_HELP}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.widths[0],) if self.kind == "mlp" else (1, 28, 28)

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1 if self.kind == "mlp" else 5

    @property
    def n_classes(self) -> int:
        return self.widths[-1] if self.kind == "mlp" else 10

    def __str__(self) -> str:
        return "mlp:" + "-".join(map(str, self.widths)) if self.kind == "mlp" else self.kind

    @property
    def padding(self) -> int:
        """conv1's padding (LeNets only)."""
        return LENETS[self.kind]


def parse_arch(text: str) -> Arch:
    """Parse ``mlp:64-16-10``, ``lenet5`` or ``lenet5k``."""
    text = text.strip().lower()
    if text in LENETS:
        return Arch(text)
    match = re.fullmatch(r"mlp:(\d+(?:-\d+)+)", text)
    if match is None:
        raise TrainingError(f"architecture {text!r} not understood; expected {ARCH_HELP}")
    return Arch("mlp", tuple(int(w) for w in match[1].split("-")))


def parse_k(text: str, arch: Arch) -> tuple[int, ...]:
    """Parse a K list like ``1,1`` (one positive integer per layer of `arch`)."""
    try:
        k = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise TrainingError(f"K {text!r} not understood; expected comma-separated integers, one per layer") from None
    if len(k) != arch.n_layers or min(k) < 1:
        raise TrainingError(f"K {text!r}: {arch} has {arch.n_layers} layers, so give {arch.n_layers} "
                            f"positive integers (e.g. {','.join(['1'] * arch.n_layers)})")
    return k

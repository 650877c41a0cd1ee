"""Values as times: the differential encoding and weights as delay pairs.

All times are dimensionless model units; the fabric maps one unit to a wall-clock τ.

- Input encoding: x ↦ (t⁺, t⁻) = ([T0 + x]₊, [T0 − x]₊).
- Synapse: w ↦ (d⁺, d⁻) = ([c + w]₊, [c − w]₊) with w clamped to [−c, c], so d± ∈ [0, 2c]
  and d⁺ + d⁻ = 2c: the two delays are mirror images around c.
- n-bit quantisation puts d⁺ on 2ⁿ evenly spaced levels over [0, 2c]; since the grid is
  symmetric, d⁻ = 2c − d⁺ lands on the grid too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testbed.errors import ModelError


@dataclass(frozen=True)
class Constants:
    """The π² model's constants (pi2-model.md): T0 input offset, c weight clamp, s output scale."""

    t0: float = 3.0
    c: float = 3.0
    s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("t0", "c", "s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ModelError(f"constant {name} must be a finite number > 0, got {value!r}")


def encode(x: np.ndarray, t0: float) -> tuple[np.ndarray, np.ndarray]:
    """Differential encoding: (t⁺, t⁻) = ([T0 + x]₊, [T0 − x]₊)."""
    x = np.asarray(x, dtype=np.float64)
    return np.maximum(t0 + x, 0.0), np.maximum(t0 - x, 0.0)


def decode(t_plus: np.ndarray, t_minus: np.ndarray) -> np.ndarray:
    """Inverse of `encode` wherever neither time was clipped at 0: x = (t⁺ − t⁻)/2."""
    return (np.asarray(t_plus) - np.asarray(t_minus)) / 2.0


def delays(weight: np.ndarray, c: float, bits: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Synapse delays (d⁺, d⁻) of a weight array, optionally quantised to `bits` bits."""
    d_plus = np.clip(np.asarray(weight, dtype=np.float64), -c, c) + c
    if bits is not None:
        d_plus = quantise_delay(d_plus, c, bits)
    return d_plus, 2.0 * c - d_plus


def delay_step(c: float, bits: int) -> float:
    """Spacing of the 2ⁿ delay levels over [0, 2c]."""
    if not (isinstance(bits, (int, np.integer)) and 1 <= bits <= 16):
        raise ModelError(f"delay quantisation bits must be an integer in 1..16, got {bits!r}")
    return 2.0 * c / (2**bits - 1)


def quantise_delay(d: np.ndarray, c: float, bits: int) -> np.ndarray:
    """Round delays in [0, 2c] to the nearest of 2ⁿ evenly spaced levels."""
    step = delay_step(c, bits)
    return np.clip(np.rint(np.asarray(d) / step), 0, 2**bits - 1) * step


def quantise_weight(weight: np.ndarray, c: float, bits: int) -> np.ndarray:
    """The weight whose delays are the quantised delays of `weight` (w = d⁺ − c)."""
    d_plus, _ = delays(weight, c, bits)
    return d_plus - c

"""Data sets, teachers and knowledge distillation into π² students.

`datasets` and `evaluate` are numpy-only so `pi2 eval` runs without torch. Everything that
trains (`teacher`, `pi2_torch`, `distill`, `recipe`) needs the train extra and imports torch
through `require_torch`, which turns a missing torch into a `TrainingError` that says what to install.
"""

from __future__ import annotations

from types import ModuleType

from testbed.errors import TrainingError

TORCH_VERSION = "2.13.0"


def require_torch() -> ModuleType:
    """Import torch, or explain how to install it."""
    try:
        import torch
    except ImportError:
        raise TrainingError(
            f"training needs torch: install the train extra: pip install 'pi2-testbed[train]' (torch=={TORCH_VERSION})"
        ) from None
    return torch

"""Shared test policy: `root` tests need root, `torch` tests need torch (skipped otherwise)."""

from __future__ import annotations

import importlib.util
import os

import pytest

# Kernel tests queue behind another process's run in use (a `pi2 infer` on a shared machine)
# instead of failing with RunBusyError; set before testbed.kernel.names is imported.
os.environ.setdefault("PI2_WAIT_S", "900")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_root = pytest.mark.skip(reason="needs root (CAP_NET_ADMIN): run with sudo")
    no_torch = pytest.mark.skip(reason="needs torch: pip install -e '.[train]'")
    has_torch = importlib.util.find_spec("torch") is not None
    for item in items:
        if "root" in item.keywords and os.geteuid() != 0:
            item.add_marker(no_root)
        if "torch" in item.keywords and not has_torch:
            item.add_marker(no_torch)

"""Names carry the run id and fit IFNAMSIZ; registries round-trip through JSON (no root)."""

from __future__ import annotations

import os
import re

import pytest

from testbed.errors import KernelError
from testbed.kernel.names import (IFNAME_MAX, RunRegistry, is_ours, new_run_id, object_name,
                                  process_start_ticks, run_id_of)


def test_run_ids_are_short_random_and_valid() -> None:
    ids = {new_run_id() for _ in range(200)}
    assert all(re.fullmatch(r"[a-z0-9]{4}", i) for i in ids)
    assert len(ids) > 190


def test_names_round_trip_and_fit_ifnamsiz() -> None:
    name = object_name("k3x9", "h12e0abcd")
    assert name == "p2k3x9h12e0abcd" and len(name) == IFNAME_MAX
    assert run_id_of(name) == "k3x9" and is_ours(name) and is_ours(name, frozenset({"k3x9"}))
    assert not is_ours(name, frozenset({"aaaa"}))
    assert run_id_of("eth0") is None and run_id_of("p2ab") is None


@pytest.mark.parametrize(("run_id", "suffix"), [("k3x9", "h12e0abcde"), ("k3x9", "a/b"), ("K3X9", "a"), ("k3x", "a")])
def test_bad_names_raise(run_id: str, suffix: str) -> None:
    with pytest.raises(KernelError):
        object_name(run_id, suffix)


def test_registry_round_trip_and_ownership(tmp_path) -> None:
    reg = RunRegistry.create(directory=tmp_path)
    reg.record("netns", name=object_name(reg.run_id, "a"))
    reg.record("link", name=object_name(reg.run_id, "x"), netns=None, peer=object_name(reg.run_id, "y"),
               peer_netns=object_name(reg.run_id, "a"))
    reg.record_pid(os.getpid())
    loaded = RunRegistry.load(reg.run_id, tmp_path)
    assert loaded.to_dict() == reg.to_dict()
    assert loaded.namespaces == [object_name(reg.run_id, "a")]
    assert loaded.of_kind("pid")[0]["start"] == process_start_ticks(os.getpid())
    with pytest.raises(KernelError, match="not named for run"):
        reg.record("netns", name="p2zzzza")
    with pytest.raises(KernelError, match="already exists"):
        RunRegistry.create(reg.run_id, tmp_path)
    assert [r.run_id for r in RunRegistry.all(tmp_path)] == [reg.run_id]
    reg.delete()
    with pytest.raises(KernelError, match="no registry"):
        RunRegistry.load(reg.run_id, tmp_path)

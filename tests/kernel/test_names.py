"""Names carry the run id and fit IFNAMSIZ; registries round-trip through JSON (no root)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from testbed.errors import KernelError, RegistryError, RunBusyError
from testbed.kernel import names
from testbed.kernel.names import (IFNAME_MAX, RunRegistry, is_ours, new_run_id, object_name,
                                  process_start_ticks, registry_dir, release_run, run_id_of)


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
    assert [r.run_id for r in RunRegistry.scan(tmp_path)[0]] == [reg.run_id]
    reg.delete()
    with pytest.raises(KernelError, match="no registry"):
        RunRegistry.load(reg.run_id, tmp_path)


def test_records_are_appended_not_rewritten(tmp_path) -> None:
    """Recording is linear in the plan's size: each record appends one line to the same file
    (rewriting the whole registry per record made building a plan quadratic)."""
    reg = RunRegistry.create(directory=tmp_path)
    inode, before = reg.path.stat().st_ino, reg.path.read_bytes()
    for i in range(50):
        reg.record("netns", name=object_name(reg.run_id, f"n{i}"))
        after = reg.path.read_bytes()
        assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 1
        before = after
    assert reg.path.stat().st_ino == inode
    assert len(RunRegistry.load(reg.run_id, tmp_path).entries) == 50
    reg.delete()


def test_a_record_cut_short_by_a_kill_is_ignored(tmp_path) -> None:
    reg = RunRegistry.create(directory=tmp_path)
    reg.record("netns", name=object_name(reg.run_id, "a"))
    with open(reg.path, "ab") as out:
        out.write(b'{"kind": "netns", "na')  # a kill mid-append: that object was never created
    assert RunRegistry.load(reg.run_id, tmp_path).namespaces == [object_name(reg.run_id, "a")]
    reg.delete()


def _header(run_id: str, **over) -> dict:
    return {"format": "pi2-run-registry", "version": 1, "run_id": run_id, "owner_pid": 1, "owner_start": None, **over}


BAD_REGISTRIES = {
    "empty": b"",
    "json object": b"{}\n",
    "old format": json.dumps({"run_id": "zzz1", "owner_pid": 1, "entries": []}).encode() + b"\n",
    "random bytes": bytes(range(256)) * 4 + b"\n",
    "not utf-8": b"\xff\xfe\n",
    "wrong run id": json.dumps(_header("abcd")).encode() + b"\n",
    "owner pid a string": json.dumps(_header("zzz1", owner_pid="1")).encode() + b"\n",
    "unknown header key": json.dumps(_header("zzz1", extra=1)).encode() + b"\n",
    "entry of unknown kind": (json.dumps(_header("zzz1")) + "\n" + json.dumps({"kind": "qdisc"}) + "\n").encode(),
    "entry naming eth0": (json.dumps(_header("zzz1")) + "\n" + json.dumps({"kind": "link", "name": "eth0"}) + "\n").encode(),
    "namespace not the run's": (json.dumps(_header("zzz1")) + "\n"
                                + json.dumps({"kind": "netns", "name": "p2abcdh"}) + "\n").encode(),
    "link in a foreign namespace": (json.dumps(_header("zzz1")) + "\n" + json.dumps(
        {"kind": "bridge", "name": "p2zzz1b", "netns": "../../etc"}) + "\n").encode(),
    "pid zero": (json.dumps(_header("zzz1")) + "\n" + json.dumps({"kind": "pid", "pid": 0, "start": 1}) + "\n").encode(),
    "entry key unknown": (json.dumps(_header("zzz1")) + "\n"
                          + json.dumps({"kind": "netns", "name": "p2zzz1h", "rm": "-rf"}) + "\n").encode(),
    "entry a list": (json.dumps(_header("zzz1")) + "\n[1, 2]\n").encode(),
}


@pytest.mark.parametrize("content", BAD_REGISTRIES.values(), ids=BAD_REGISTRIES.keys())
def test_a_bad_registry_is_one_error_and_never_hides_the_others(tmp_path, content) -> None:
    good = RunRegistry.create(directory=tmp_path)
    (tmp_path / "zzz1.jsonl").write_bytes(content)
    with pytest.raises(RegistryError, match=r"zzz1.*pi2 clean") as err:
        RunRegistry.load("zzz1", tmp_path)
    assert "\n" not in str(err.value)
    found, bad = RunRegistry.scan(tmp_path)
    assert [r.run_id for r in found] == [good.run_id] and list(bad) == [tmp_path / "zzz1.jsonl"]
    assert RunRegistry.create(directory=tmp_path).run_id not in (good.run_id, "zzz1")  # runs still start
    good.delete()


def test_registry_is_never_read_through_a_symlink(tmp_path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(json.dumps(_header("zzz1")) + "\n")
    (tmp_path / "zzz1.jsonl").symlink_to(target)
    with pytest.raises(RegistryError, match="zzz1"):
        RunRegistry.load("zzz1", tmp_path)


@pytest.mark.parametrize("make", ["world-writable", "symlink"])
def test_registry_dir_must_be_ours_alone(tmp_path, make) -> None:
    real = tmp_path / "real"
    real.mkdir()
    if make == "world-writable":
        real.chmod(0o777)
        directory = real
    else:
        directory = tmp_path / "link"
        directory.symlink_to(real)
    with pytest.raises(RegistryError, match="writable only by it"):
        registry_dir(directory)
    with pytest.raises(RegistryError):
        RunRegistry.create(directory=directory)


HOLD = """
import sys, time
from pathlib import Path
from testbed.kernel.names import RunRegistry
reg = RunRegistry.create(directory=Path(sys.argv[1]))
print(reg.run_id, flush=True)
time.sleep(600)
"""


def test_a_second_process_refuses_beside_a_run_in_use_and_names_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(names, "WAIT_S", 0.0)
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        busy = child.stdout.readline().split()[0]  # type: ignore[union-attr]
        with pytest.raises(RunBusyError, match=rf"run {busy} \(pid {child.pid}: .*python.*\).*pi2 down {busy}"):
            RunRegistry.create(directory=tmp_path)
        assert RunRegistry.load(busy, tmp_path).busy()
    finally:
        child.kill()
        child.wait()
    # the kernel dropped the lock with the process: the run is registered, no longer in use
    assert not RunRegistry.load(busy, tmp_path).busy()
    RunRegistry.create(directory=tmp_path).delete()


def test_released_run_is_not_in_use(tmp_path) -> None:
    reg = RunRegistry.create(directory=tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                            "from testbed.kernel.names import RunRegistry; "
                            f"print(RunRegistry.load({reg.run_id!r}, Path(sys.argv[1])).busy())", str(tmp_path)],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "True"
    release_run(reg.run_id, tmp_path)
    assert not reg.busy()
    with pytest.raises(KernelError, match="only a run's owner records"):
        reg.record("netns", name=object_name(reg.run_id, "a"))


def test_with_pi2_wait_s_a_new_run_waits_for_the_one_in_use(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(names, "WAIT_S", 120.0)
    child = subprocess.Popen([sys.executable, "-c", HOLD.replace("600", "1"), str(tmp_path)], stdout=subprocess.PIPE,
                             text=True)
    try:
        busy = child.stdout.readline().split()[0]  # type: ignore[union-attr]
        reg = RunRegistry.create(directory=tmp_path)  # returns once the child's run ended
        assert child.poll() is not None and reg.run_id != busy
    finally:
        child.kill()
        child.wait()

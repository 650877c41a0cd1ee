"""Remove what runs made: exactly one run (`down`), or everything named ``p2<run>`` (`clean`).

`down` trusts the run's registry and removes its objects in reverse creation order. `clean` is
for after crashes: it also finds objects by name (``p2`` + 4-char run id, testbed.kernel.names)
in the root namespace and in every namespace under /run/netns. Both are safe to repeat: what is
already gone (ENODEV, ENOENT) is skipped. Processes are never killed by name, only by a pid a
registry recorded, and only if that pid still has the recorded start time.

tc objects need no removal: they die with their link. Links inside a removed namespace go when
the kernel tears the namespace down (asynchronously, once no process or socket holds it), so
only link ends outside the run's own namespaces are deleted one by one.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from pathlib import Path
from typing import Any

from testbed.errors import KernelError, NeedsRootError
from testbed.kernel import netns
from testbed.kernel.names import REGISTRY_DIR, RunRegistry, is_ours, process_start_ticks
from testbed.kernel.netlink import NetlinkBatch

GONE = frozenset({errno.ENODEV, errno.ENOENT})


def require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise NeedsRootError(f"{action} needs root (CAP_NET_ADMIN, /run/netns): run it with sudo")


def _kill_recorded(entry: dict[str, Any]) -> bool:
    """SIGKILL a recorded helper if the pid still belongs to it; True if signalled."""
    pid, start = entry["pid"], entry.get("start")
    if start is None or process_start_ticks(pid) != start:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def link_names(ns: str | None) -> list[str]:
    """Interface names in namespace `ns` (None: ours); [] if the namespace vanished."""
    try:
        return [name for _, name in netns.run_in(ns, socket.if_nameindex)]
    except KernelError:  # the namespace was removed meanwhile
        return []


def _delete_links(ns: str | None, names: list[str]) -> None:
    if not names or (ns is not None and not netns.exists(ns)):
        return
    with NetlinkBatch(ns) as nl:
        for name in names:
            nl.delete_link(name, f"link {name}" + ("" if ns is None else f" in namespace {ns}"))
        nl.commit(tolerate=GONE)


def down(run_id: str, directory: Path = REGISTRY_DIR) -> dict[str, list[Any]]:
    """Remove exactly what run `run_id` recorded, newest first, then its registry."""
    require_root(f"pi2 down {run_id}")
    reg = RunRegistry.load(run_id, directory)
    own = set(reg.namespaces)
    removed: dict[str, list[Any]] = {"pids": [], "links": [], "namespaces": []}
    for entry in reversed(reg.entries):
        kind = entry["kind"]
        if kind == "pid":
            if _kill_recorded(entry):
                removed["pids"].append(entry["pid"])
        elif kind in ("link", "bridge"):
            # Delete through an end outside the run's namespaces; ends inside go with them.
            ends = [(entry["name"], entry.get("netns")), (entry.get("peer"), entry.get("peer_netns"))]
            outside = [(n, ns) for n, ns in ends if n is not None and ns not in own]
            if outside:
                name, ns = outside[0]
                if name in link_names(ns):
                    _delete_links(ns, [name])
                    removed["links"].append(name)
        elif kind == "netns":
            if netns.remove(entry["name"]):
                removed["namespaces"].append(entry["name"])
    reg.delete()
    return removed


def clean(run_ids: frozenset[str] | None = None, directory: Path = REGISTRY_DIR) -> dict[str, list[Any]]:
    """Remove every ``p2<run>`` namespace and link (of `run_ids`, or of every run) and their
    registries; kill helper pids those registries recorded. Safe to run twice."""
    require_root("pi2 clean")
    removed: dict[str, list[Any]] = {"pids": [], "links": [], "namespaces": [], "registries": []}
    regs = [r for r in RunRegistry.all(directory) if run_ids is None or r.run_id in run_ids]
    for reg in regs:
        for entry in reversed(reg.of_kind("pid")):
            if _kill_recorded(entry):
                removed["pids"].append(entry["pid"])
    ours = [n for n in netns.list_names() if is_ours(n, run_ids)]
    for ns in [None] + [n for n in netns.list_names() if n not in ours]:
        names = [n for n in link_names(ns) if is_ours(n, run_ids)]
        _delete_links(ns, names)
        removed["links"].extend(names)
    for ns in ours:
        if netns.remove(ns):
            removed["namespaces"].append(ns)
    for reg in regs:
        reg.delete()
        removed["registries"].append(reg.run_id)
    if directory.is_dir():  # half-written registries (a kill during save) hold nothing to remove
        for tmp in directory.glob("*.tmp"):
            if run_ids is None or tmp.stem in run_ids:
                tmp.unlink(missing_ok=True)
    return removed


def status(directory: Path = REGISTRY_DIR) -> dict[str, Any]:
    """Every registered run with its objects (and whether each still exists), plus ``p2``
    objects no registry names (left by a crash before its registry was written)."""
    require_root("pi2 status")
    namespaces = set(netns.list_names())
    links = {ns: set(link_names(ns)) for ns in [None] + sorted(namespaces)}
    registered: set[str] = set()
    runs = []
    for reg in RunRegistry.all(directory):
        objects = []
        for entry in reg.entries:
            if entry["kind"] == "netns":
                alive = entry["name"] in namespaces
            elif entry["kind"] == "pid":
                alive = entry.get("start") is not None and process_start_ticks(entry["pid"]) == entry["start"]
            else:
                alive = entry["name"] in links.get(entry.get("netns"), set())
            registered.add(entry.get("name", ""))
            registered.add(entry.get("peer", "") or "")
            objects.append({**entry, "alive": alive})
        owner_alive = process_start_ticks(reg.owner_pid) is not None
        runs.append({"run_id": reg.run_id, "owner_pid": reg.owner_pid, "owner_alive": owner_alive, "objects": objects})
    orphans = sorted({n for n in namespaces if is_ours(n) and n not in registered}
                     | {n for names in links.values() for n in names if is_ours(n) and n not in registered})
    return {"runs": runs, "unregistered": orphans}

"""Remove what runs made, by ownership: what their registries recorded, and nothing else unasked.

`down` removes one run, `clean` every run with a registry (both after stopping a run whose
owner process is still using it: SIGTERM, so the owner tears down and exits 143, then SIGKILL
if it does not). They trust only the registries (testbed.kernel.names), which record every
object before it is made, so after any crash they find all of a run's objects without
guessing by name. A ``p2…`` name alone proves nothing: a user may own ``p2user0a`` (the run id
pattern is just 4 characters), so objects no registry records are only *listed*
(`unrecorded`, shown by `pi2 status` and `pi2 clean`) and removed by `sweep` when the user
asks for exactly that list (`pi2 clean --sweep`). Mininet's ``mn -c``, which deletes every
``*-ethN`` link on the host, is the cautionary tale.

Everything is safe to repeat: what is already gone (ENODEV, ENOENT) is skipped. Processes are
never killed by name, only by a pid a registry recorded, and only if that pid still has the
recorded start time. tc objects need no removal: they die with their link. Links inside a
removed namespace go when the kernel tears the namespace down (asynchronously, once no process
or socket holds it), so only link ends outside the run's own namespaces are deleted one by one.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from testbed.errors import KernelError, NeedsRootError
from testbed.kernel import netns
from testbed.kernel.names import REGISTRY_DIR, RUN_DIR_SUFFIX, RUN_ID_LEN, RunRegistry, is_locked, is_ours, process_start_ticks
from testbed.kernel.netlink import NetlinkBatch

GONE = frozenset({errno.ENODEV, errno.ENOENT})
STOP_WAIT_S = 60.0  # a run's own teardown of a large plan takes seconds; then SIGKILL
KILL_WAIT_S = 5.0


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


def _wait_exit(pidfd: int, timeout_s: float) -> bool:
    """True once the process behind `pidfd` has exited (a pidfd polls readable then)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout_s * 1e3))


def stop_owner(reg: RunRegistry) -> int | None:
    """If another live process is using run `reg` (it holds the registry's lock), stop it:
    SIGTERM, so it tears its fabric down itself, then SIGKILL after STOP_WAIT_S. Returns the
    pid stopped, or None if nobody was using the run."""
    pid = reg.owner_pid
    if pid == os.getpid() or not reg.busy() or not reg.owner_alive():
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        if process_start_ticks(pid) != reg.owner_start:  # the pid was reused before we held it
            return None
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if not _wait_exit(pidfd, STOP_WAIT_S):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            if not _wait_exit(pidfd, KILL_WAIT_S):
                raise KernelError(f"run {reg.run_id}: owner pid {pid} survived SIGKILL; try again")
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)
    return pid


def link_names(ns: str | None) -> list[str]:
    """Interface names in namespace `ns` (None: ours); [] if the namespace vanished."""
    try:
        return [name for _, name in netns.run_in(ns, socket.if_nameindex)]
    except KernelError:  # the namespace was removed meanwhile
        return []


def _delete_links(ns: str | None, names: list[str]) -> None:
    if not names or (ns is not None and not ns.startswith("/") and not netns.exists(ns)):
        return
    with NetlinkBatch(ns) as nl:
        for name in names:
            nl.delete_link(name, f"link {name}" + ("" if ns is None else f" in namespace {ns}"))
        nl.commit(tolerate=GONE)


def _empty() -> dict[str, list[Any]]:
    return {"stopped": [], "pids": [], "links": [], "namespaces": []}


def _remove(reg: RunRegistry, removed: dict[str, list[Any]]) -> None:
    """Remove what `reg` recorded, newest first, then the registry itself."""
    own = set(reg.namespaces)
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


def _stop_and_remove(reg: RunRegistry, removed: dict[str, list[Any]]) -> None:
    stopped = stop_owner(reg)
    if stopped is not None:
        removed["stopped"].append(stopped)
        if not reg.path.exists():  # the owner tore its run down itself
            return
        reg = RunRegistry.load(reg.run_id, reg.directory)  # it may have recorded more meanwhile
    _remove(reg, removed)


def down(run_id: str, directory: Path = REGISTRY_DIR) -> dict[str, list[Any]]:
    """Stop run `run_id` if a process is using it, then remove exactly what it recorded."""
    require_root(f"pi2 down {run_id}")
    removed = _empty()
    _stop_and_remove(RunRegistry.load(run_id, directory), removed)
    return removed


def clean(run_ids: frozenset[str] | None = None, directory: Path = REGISTRY_DIR) -> dict[str, list[Any]]:
    """`down` every registered run (of `run_ids`, or all), remove unreadable registries (each
    reported in ``unreadable``: their objects then show up in `unrecorded`) and the temporary
    files of half-made ones. Never touches an object no registry recorded. Safe to run twice."""
    require_root("pi2 clean")
    removed: dict[str, list[Any]] = {**_empty(), "registries": [], "unreadable": []}
    good, bad = RunRegistry.scan(directory)
    for reg in good:
        if run_ids is None or reg.run_id in run_ids:
            _stop_and_remove(reg, removed)
            removed["registries"].append(reg.run_id)
    for path, error in bad.items():
        if (run_ids is None or path.stem in run_ids) and not is_locked(path):
            path.unlink(missing_ok=True)
            shutil.rmtree(path.with_suffix(RUN_DIR_SUFFIX), ignore_errors=True)  # its files (RunRegistry.run_dir)
            removed["unreadable"].append(str(error))
    if directory.is_dir():  # a kill between writing a registry's header and linking it
        for tmp in directory.glob(".*.tmp"):
            if run_ids is None or tmp.name[1:1 + RUN_ID_LEN] in run_ids:
                tmp.unlink(missing_ok=True)
    return removed


@dataclass(frozen=True)
class Unrecorded:
    """A ``p2``-named object no readable registry records: maybe a crashed run's whose registry
    was lost, maybe someone else's. Only an explicit `sweep` removes it."""

    kind: str  # "netns" or "link"
    name: str
    netns: str | None  # where a link is (None: the root namespace)

    def __str__(self) -> str:
        return f"namespace {self.name}" if self.kind == "netns" else \
            f"link {self.name} in {'the root namespace' if self.netns is None else 'namespace ' + self.netns}"


def _recorded_names(directory: Path) -> set[str]:
    names: set[str] = set()
    for reg in RunRegistry.scan(directory)[0]:
        for entry in reg.entries:
            names.update(v for k, v in entry.items() if k in ("name", "peer", "netns", "peer_netns") and v)
    return names


def unrecorded(run_ids: frozenset[str] | None = None, directory: Path = REGISTRY_DIR) -> list[Unrecorded]:
    """Namespaces under /run/netns and links (root namespace, and namespaces no run recorded or
    not ours) named ``p2`` + a run id (of `run_ids`, if given) that no readable registry records."""
    recorded = _recorded_names(directory)
    found: list[Unrecorded] = []
    names = netns.list_names()
    for ns in names:
        if is_ours(ns, run_ids) and ns not in recorded:
            found.append(Unrecorded("netns", ns, None))
    ours = {ns for ns in names if is_ours(ns)}
    for ns in [None] + [n for n in names if n not in ours]:
        found += [Unrecorded("link", name, ns) for name in link_names(ns)
                  if is_ours(name, run_ids) and name not in recorded]
    return found


def sweep(objects: list[Unrecorded]) -> dict[str, list[Any]]:
    """Remove exactly `objects` (what `unrecorded` listed and the user confirmed); what is gone
    already is skipped."""
    require_root("pi2 clean --sweep")
    removed: dict[str, list[Any]] = {"links": [], "namespaces": []}
    by_ns: dict[str | None, list[str]] = {}
    for obj in objects:
        if obj.kind == "link":
            by_ns.setdefault(obj.netns, []).append(obj.name)
    for ns, wanted in by_ns.items():
        present = [name for name in wanted if name in link_names(ns)]
        _delete_links(ns, present)
        removed["links"] += present
    for obj in objects:
        if obj.kind == "netns" and netns.remove(obj.name):
            removed["namespaces"].append(obj.name)
    return removed


def status(directory: Path = REGISTRY_DIR) -> dict[str, Any]:
    """Every registered run with its objects (and whether each still exists) and whether a
    process is using it, the registries that cannot be read, and ``p2`` objects no registry
    records."""
    require_root("pi2 status")
    namespaces = set(netns.list_names())
    links = {ns: set(link_names(ns)) for ns in [None] + sorted(namespaces)}
    good, bad = RunRegistry.scan(directory)
    runs = []
    for reg in good:
        objects = []
        for entry in reg.entries:
            if entry["kind"] == "netns":
                alive = entry["name"] in namespaces
            elif entry["kind"] == "pid":
                alive = entry.get("start") is not None and process_start_ticks(entry["pid"]) == entry["start"]
            else:
                alive = entry["name"] in links.get(entry.get("netns"), set())
            objects.append({**entry, "alive": alive})
        runs.append({"run_id": reg.run_id, "owner_pid": reg.owner_pid, "owner_alive": reg.owner_alive(),
                     "in_use": reg.busy(), "objects": objects})
    return {"runs": runs, "unreadable": [str(e) for e in bad.values()],
            "unregistered": [asdict(o) for o in unrecorded(None, directory)]}


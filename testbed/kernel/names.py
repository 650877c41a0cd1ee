"""Names of the kernel objects a run makes, and the registry that remembers them.

Every namespace, link and bridge the testbed creates is named ``p2`` + run id (4 chars
[a-z0-9]) + a short suffix, so `pi2 clean` can find exactly ours by pattern even after a
crash, and two runs never collide. Linux caps interface names at 15 bytes (IFNAMSIZ 16 with
the NUL), which leaves 9 bytes of suffix.

A `RunRegistry` lists what one run created, in creation order, as JSON under
``/run/pi2/<runid>.json`` (tmpfs: it disappears on reboot together with the objects), so
``pi2 status`` and ``pi2 down RUN`` work from another process. Objects are recorded *before*
they are created: after a SIGKILL the registry may name an object that never appeared, and
removal tolerates that.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import KernelError

PREFIX = "p2"
RUN_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
RUN_ID_LEN = 4
IFNAME_MAX = 15  # IFNAMSIZ - 1 (include/uapi/linux/if.h)
SUFFIX_MAX = IFNAME_MAX - len(PREFIX) - RUN_ID_LEN
NAME_RE = re.compile(rf"^{PREFIX}([a-z0-9]{{{RUN_ID_LEN}}})")
RUN_ID_RE = re.compile(rf"^[a-z0-9]{{{RUN_ID_LEN}}}$")
SUFFIX_RE = re.compile(r"^[a-z0-9._-]*$")
REGISTRY_DIR = Path("/run/pi2")
KINDS = ("netns", "link", "bridge", "pid")


def new_run_id() -> str:
    """A random run id, e.g. ``k3x9`` (36⁴ ≈ 1.7 M values; collisions are checked by the registry)."""
    return "".join(secrets.choice(RUN_ID_CHARS) for _ in range(RUN_ID_LEN))


def check_run_id(run_id: str) -> str:
    if not RUN_ID_RE.match(run_id):
        raise KernelError(f"run id {run_id!r}: expected {RUN_ID_LEN} characters of [a-z0-9], e.g. 'k3x9'")
    return run_id


def object_name(run_id: str, suffix: str) -> str:
    """``p2<run><suffix>``, guaranteed to be a valid interface name (≤ 15 bytes)."""
    check_run_id(run_id)
    if len(suffix) > SUFFIX_MAX or not SUFFIX_RE.match(suffix):
        raise KernelError(
            f"name suffix {suffix!r} for run {run_id}: expected at most {SUFFIX_MAX} characters of "
            f"[a-z0-9._-] (interface names are capped at {IFNAME_MAX} bytes)"
        )
    return f"{PREFIX}{run_id}{suffix}"


def run_id_of(name: str) -> str | None:
    """The run id a testbed object name carries, or None if the name is not ours."""
    match = NAME_RE.match(name)
    return None if match is None else match.group(1)


def is_ours(name: str, run_ids: frozenset[str] | None = None) -> bool:
    """True if `name` carries the project prefix (and, if given, one of `run_ids`)."""
    run_id = run_id_of(name)
    return run_id is not None and (run_ids is None or run_id in run_ids)


def process_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), None if gone.

    Recorded with a pid so a later cleanup never kills an unrelated process that reused the pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass
class RunRegistry:
    """What one run created, in creation order; saved after every change.

    Entries are dicts: ``{"kind": "netns", "name": ...}``, ``{"kind": "link"|"bridge", "name": ...,
    "netns": ns-or-None, "peer": ..., "peer_netns": ...}`` (peer keys for veths only) and
    ``{"kind": "pid", "pid": ..., "start": ticks}``.
    """

    run_id: str
    owner_pid: int = field(default_factory=os.getpid)
    entries: list[dict[str, Any]] = field(default_factory=list)
    directory: Path = REGISTRY_DIR

    @property
    def path(self) -> Path:
        return self.directory / f"{self.run_id}.json"

    @classmethod
    def create(cls, run_id: str | None = None, directory: Path = REGISTRY_DIR) -> "RunRegistry":
        """A new, saved registry; a fresh random run id unless one is given (which must be unused)."""
        directory.mkdir(parents=True, exist_ok=True)
        for _ in range(16):
            rid = check_run_id(run_id) if run_id is not None else new_run_id()
            reg = cls(rid, directory=directory)
            try:
                fd = os.open(reg.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if run_id is not None:
                    raise KernelError(f"run {run_id}: a registry already exists at {reg.path}; "
                                      f"run `sudo pi2 down {run_id}` first") from None
                continue
            os.close(fd)
            reg.save()
            return reg
        raise KernelError(f"could not find an unused run id in {directory}; run `sudo pi2 clean`")

    @classmethod
    def load(cls, run_id: str, directory: Path = REGISTRY_DIR) -> "RunRegistry":
        path = directory / f"{check_run_id(run_id)}.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise KernelError(f"run {run_id}: no registry at {path}; `pi2 status` lists the runs") from None
        except json.JSONDecodeError as exc:
            raise KernelError(f"run {run_id}: registry {path} is not JSON ({exc}); `sudo pi2 clean` removes it") from None
        return cls(raw["run_id"], raw["owner_pid"], list(raw["entries"]), directory)

    @classmethod
    def all(cls, directory: Path = REGISTRY_DIR) -> list["RunRegistry"]:
        """Every readable registry in `directory`, by run id."""
        if not directory.is_dir():
            return []
        regs = []
        for path in sorted(directory.glob("*.json")):
            try:
                regs.append(cls.load(path.stem, directory))
            except KernelError:
                continue
        return regs

    def save(self) -> None:
        """Write atomically (temp file + rename) so a kill never leaves half a registry."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "owner_pid": self.owner_pid, "entries": self.entries}))
        os.replace(tmp, self.path)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    def record(self, kind: str, **fields: Any) -> None:
        if kind not in KINDS:
            raise KernelError(f"registry entry kind {kind!r}: expected one of {KINDS}")
        name = fields.get("name")
        if name is not None and not is_ours(name, frozenset({self.run_id})):
            raise KernelError(f"{kind} {name!r}: not named for run {self.run_id}; build names with object_name()")
        self.entries.append({"kind": kind, **fields})
        self.save()

    def record_pid(self, pid: int) -> None:
        """Remember a helper process this run started (with its start time, against pid reuse)."""
        self.record("pid", pid=pid, start=process_start_ticks(pid))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["kind"] == kind]

    @property
    def namespaces(self) -> list[str]:
        return [e["name"] for e in self.of_kind("netns")]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "owner_pid": self.owner_pid, "entries": list(self.entries)}

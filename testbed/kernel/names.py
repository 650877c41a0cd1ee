"""Names of the kernel objects a run makes, and the registry that remembers them.

Every namespace, link and bridge the testbed creates is named ``p2`` + run id (4 chars
[a-z0-9]) + a short suffix, so `pi2 clean` can find exactly ours by pattern even after a
crash, and two runs never collide. Linux caps interface names at 15 bytes (IFNAMSIZ 16 with
the NUL), which leaves 9 bytes of suffix.

A `RunRegistry` lists what one run created, in creation order, under ``/run/pi2/<runid>.jsonl``
(tmpfs: it disappears on reboot together with the objects), so ``pi2 status`` and ``pi2 down RUN``
work from another process. Objects are recorded *before* they are created: after a SIGKILL the
registry may name an object that never appeared, and removal tolerates that.

The file is JSON lines, appended to: a header line, then one line per object. One append per
record keeps recording linear in the plan's size (rewriting the whole file each time was
quadratic); a kill mid-append leaves at most a last line without its newline, which names an
object not yet created and is ignored. Loading checks every line (kinds, keys, types) and that
every name carries the run's id, so a damaged or planted registry can never make cleanup touch
an object that is not the run's, and one bad file is reported on its own, never stopping other runs.

While a run's owner process is building or using its fabric it holds an exclusive flock(2) on
its registry: another process's run refuses to start beside it (`RunBusyError`, naming it),
since two runs sharing the CPUs spoil each other's timing, and `pi2 down`/`pi2 clean` know to stop
it first (testbed.kernel.cleanup). The kernel drops the lock when the process dies, SIGKILL
included, so no stale lock survives a crash.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import KernelError, RegistryError, RunBusyError

PREFIX = "p2"
RUN_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
RUN_ID_LEN = 4
IFNAME_MAX = 15  # IFNAMSIZ - 1 (include/uapi/linux/if.h)
SUFFIX_MAX = IFNAME_MAX - len(PREFIX) - RUN_ID_LEN
NAME_RE = re.compile(rf"^{PREFIX}([a-z0-9]{{{RUN_ID_LEN}}})")
RUN_ID_RE = re.compile(rf"^[a-z0-9]{{{RUN_ID_LEN}}}$")
SUFFIX_RE = re.compile(r"^[a-z0-9._-]*$")
# PI2_RUN_DIR: another directory for the registries (test suites that must not see, or stop,
# the runs of other users of the machine); checked like /run/pi2 (registry_dir).
REGISTRY_DIR = Path(os.environ.get("PI2_RUN_DIR", "/run/pi2"))
REGISTRY_FORMAT = "pi2-run-registry"
REGISTRY_VERSION = 1
REGISTRY_SUFFIX = ".jsonl"
RUN_DIR_SUFFIX = ".d"  # a run's files: RunRegistry.run_dir
REGISTRY_MAX_BYTES = 64 << 20  # far above any plan's (≈100 bytes per object); a bigger file is not ours
LOCK_NAME = "lock"  # flock'd briefly while a run checks for busy runs and creates its registry
KINDS = ("netns", "link", "bridge", "pid")
ENTRY_KEYS = {"netns": {"name"}, "link": {"name", "netns", "peer", "peer_netns"}, "bridge": {"name", "netns"},
              "pid": {"pid", "start"}}
HEADER_KEYS = {"format", "version", "run_id", "owner_pid", "owner_start"}
PROC_NETNS_RE = re.compile(r"^/proc/[0-9]+/ns/net$")  # a process's anonymous namespace (Mininet hosts)
# PI2_WAIT_S: seconds a new run waits for another process's run in use to end before refusing
# (default 0: refuse at once, naming it). Test suites on a shared machine queue this way.
WAIT_S = float(os.environ.get("PI2_WAIT_S", "0"))
WAIT_POLL_S = 0.2
_HELD: dict[Path, int] = {}  # registry path -> the locked, append-only fd of a run this process created


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
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return int(text.rsplit(")", 1)[1].split()[19])


def command_line(pid: int) -> str:
    """The command line of `pid` on one line of ≤ 80 characters (for messages that name a run's
    process), '' if gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    text = " ".join(" ".join(arg.decode(errors="replace").split()) for arg in raw.split(b"\0") if arg)
    return text if len(text) <= 80 else text[:79] + "…"  # one line in a one-line error


def registry_dir(directory: Path) -> Path:
    """`directory`, made if missing, refused if someone else could plant files or links in it:
    it must be a real directory (not a symlink) owned by us and writable by nobody else."""
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        info = os.lstat(directory)
    except OSError as exc:
        raise RegistryError(f"registry directory {directory}: {exc.strerror}; run as root (sudo)") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise RegistryError(f"registry directory {directory}: must be a directory owned by uid {os.geteuid()} and "
                            f"writable only by it (is mode {stat.filemode(info.st_mode)}, uid {info.st_uid}); "
                            f"remove it and run again")
    return directory


def _is_run_netns(value: Any, run_id: str) -> bool:
    return value is None or (isinstance(value, str) and (is_ours(value, frozenset({run_id}))
                                                         or PROC_NETNS_RE.match(value) is not None))


def _check_entry(entry: Any, run_id: str, where: str) -> dict[str, Any]:
    """One registry line as an entry of run `run_id`, or RegistryError saying what is wrong."""
    if not isinstance(entry, dict) or entry.get("kind") not in KINDS:
        raise RegistryError(f"{where}: expected an object with 'kind' one of {list(KINDS)}, got {str(entry)[:60]}")
    kind = entry["kind"]
    unknown = set(entry) - ENTRY_KEYS[kind] - {"kind"}
    if unknown:
        raise RegistryError(f"{where}: unknown key(s) {sorted(unknown)} for a {kind}; expected {sorted(ENTRY_KEYS[kind])}")
    mine = frozenset({run_id})
    if kind == "pid":
        pid, start = entry.get("pid"), entry.get("start")
        if type(pid) is not int or pid <= 0 or not (start is None or (type(start) is int and start >= 0)):
            raise RegistryError(f"{where}: a pid entry needs pid (integer > 0) and start (ticks ≥ 0 or null)")
        return entry
    names = [entry.get("name")] + ([entry.get("peer")] if kind == "link" else [])
    if not isinstance(names[0], str) or not all(n is None or (isinstance(n, str) and is_ours(n, mine)) for n in names):
        raise RegistryError(f"{where}: {kind} names {names} are not named for run {run_id} (p2{run_id}…); "
                            f"build names with object_name()")
    namespaces = [entry.get("netns"), entry.get("peer_netns")] if kind != "netns" else []
    if not all(_is_run_netns(ns, run_id) for ns in namespaces):
        raise RegistryError(f"{where}: namespaces {namespaces} must be null, p2{run_id}… or /proc/PID/ns/net")
    return entry




@dataclass
class RunRegistry:
    """What one run created, in creation order; each record is appended before its object exists.

    Entries are dicts: ``{"kind": "netns", "name": ...}``, ``{"kind": "link"|"bridge", "name": ...,
    "netns": ns-or-None, "peer": ..., "peer_netns": ...}`` (peer keys for veths only) and
    ``{"kind": "pid", "pid": ..., "start": ticks}``. `owner_start` is the owner's start time in
    ticks (process_start_ticks), so a reused pid is never taken for the owner.
    """

    run_id: str
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: int | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    directory: Path = REGISTRY_DIR

    @property
    def path(self) -> Path:
        return self.directory / f"{self.run_id}{REGISTRY_SUFFIX}"

    def _header(self) -> dict[str, Any]:
        return {"format": REGISTRY_FORMAT, "version": REGISTRY_VERSION, "run_id": self.run_id,
                "owner_pid": self.owner_pid, "owner_start": self.owner_start}

    @classmethod
    def create(cls, run_id: str | None = None, directory: Path = REGISTRY_DIR) -> "RunRegistry":
        """A new registry, locked by this process for as long as it is in use (or until `release`);
        a fresh random run id unless one is given (which must be unused).

        Raises `RunBusyError` if another process's run holds its registry's lock (after waiting up
        to PI2_WAIT_S seconds for it to end), naming that run."""
        registry_dir(directory)
        deadline = time.monotonic() + WAIT_S
        while True:
            with _Lock(directory / LOCK_NAME):
                busy = [reg for reg in RunRegistry.scan(directory)[0] if reg.owner_pid != os.getpid() and reg.busy()]
                if not busy:
                    return cls._new(run_id, directory)
            if time.monotonic() >= deadline:
                raise RunBusyError(busy_message(busy[0]))
            time.sleep(WAIT_POLL_S)  # waiting for another process (PI2_WAIT_S), not a delay on any data path

    @classmethod
    def _new(cls, run_id: str | None, directory: Path) -> "RunRegistry":
        taken = _names_in_use()
        for _ in range(64):
            rid = check_run_id(run_id) if run_id is not None else new_run_id()
            if run_id is None and any(is_ours(name, frozenset({rid})) for name in taken):
                continue  # an object (ours or not) already carries this id: never record its name
            reg = cls(rid, owner_start=process_start_ticks(os.getpid()), directory=directory)
            if reg._create_file():
                return reg
            if run_id is not None:
                raise KernelError(f"run {run_id}: a registry already exists at {reg.path}; "
                                  f"run `sudo pi2 down {run_id}` first")
        raise KernelError(f"could not find an unused run id in {directory}; run `sudo pi2 clean`")

    def _create_file(self) -> bool:
        """Write the header to a temporary file and link it to `path` (link fails if the name
        exists: an exclusive create whose file is never seen empty); False if the id is taken."""
        tmp = self.directory / f".{self.run_id}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, (json.dumps(self._header()) + "\n").encode())
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # on the inode: held under the final name too
            os.link(tmp, self.path)
        except FileExistsError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        _HELD[self.path] = fd
        return True

    @classmethod
    def load(cls, run_id: str, directory: Path = REGISTRY_DIR) -> "RunRegistry":
        """The registry of `run_id`, every line checked; RegistryError (one line) if it is bad."""
        return cls._read(directory / f"{check_run_id(run_id)}{REGISTRY_SUFFIX}", run_id, directory)

    @classmethod
    def _read(cls, path: Path, run_id: str, directory: Path) -> "RunRegistry":
        fix = f"`sudo pi2 clean` removes it (and `pi2 status` lists what run {run_id}'s objects may remain)"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KernelError(f"run {run_id}: no registry at {path}; `pi2 status` lists the runs") from None
        except OSError as exc:
            raise RegistryError(f"run {run_id}: registry {path}: {exc.strerror}; {fix}") from None
        with os.fdopen(fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise RegistryError(f"run {run_id}: registry {path} is not a regular file; {fix}")
            raw = src.read(REGISTRY_MAX_BYTES + 1)
        if len(raw) > REGISTRY_MAX_BYTES:
            raise RegistryError(f"run {run_id}: registry {path} is over {REGISTRY_MAX_BYTES >> 20} MiB; {fix}")
        lines = raw.split(b"\n")
        lines.pop()  # after the last newline: empty, or a record a kill cut short (its object never existed)
        try:
            records = [json.loads(line) for line in lines]
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"run {run_id}: registry {path} is not JSON lines ({exc}); {fix}") from None
        if not records:
            raise RegistryError(f"run {run_id}: registry {path} is empty; {fix}")
        header = records[0]
        if (not isinstance(header, dict) or set(header) != HEADER_KEYS or header["format"] != REGISTRY_FORMAT
                or header["version"] != REGISTRY_VERSION or header["run_id"] != run_id
                or type(header["owner_pid"]) is not int or header["owner_pid"] <= 0
                or not (header["owner_start"] is None or type(header["owner_start"]) is int)):
            raise RegistryError(f"run {run_id}: registry {path} has no valid header (expected keys "
                                f"{sorted(HEADER_KEYS)}, format {REGISTRY_FORMAT!r} version {REGISTRY_VERSION}, "
                                f"run_id {run_id!r}); {fix}")
        try:
            entries = [_check_entry(e, run_id, f"run {run_id}: registry {path} line {i}")
                       for i, e in enumerate(records[1:], 2)]
        except RegistryError as exc:
            raise RegistryError(f"{exc}; {fix}") from None
        return cls(run_id, header["owner_pid"], header["owner_start"], entries, directory)

    @classmethod
    def scan(cls, directory: Path = REGISTRY_DIR) -> tuple[list["RunRegistry"], dict[Path, RegistryError]]:
        """Every registry in `directory`, by run id: the readable ones, and the error of each bad
        one by path (reported, never raised: one damaged file must not stop any other run)."""
        if not directory.is_dir():
            return [], {}
        good: list[RunRegistry] = []
        bad: dict[Path, RegistryError] = {}
        for path in sorted(directory.glob(f"*{REGISTRY_SUFFIX}")):
            if not RUN_ID_RE.match(path.stem):
                bad[path] = RegistryError(f"{path}: not named RUN{REGISTRY_SUFFIX} with a 4-character run id; "
                                          f"`sudo pi2 clean` removes it")
                continue
            try:
                good.append(cls._read(path, path.stem, directory))
            except RegistryError as exc:
                bad[path] = exc
            except KernelError:
                continue  # removed meanwhile
        return good, bad

    def busy(self) -> bool:
        """True if another open file holds this registry's lock: its owner is building or using
        the run right now (the lock goes with the owner's process, or with `release_run`)."""
        return is_locked(self.path)

    @property
    def run_dir(self) -> Path:
        """The run's own files (e.g. the ssh keys of its emulated cluster hosts): ``<registry>.d``
        beside the registry, made on first use (mode 0700), removed with the registry."""
        path = self.directory / f"{self.run_id}{RUN_DIR_SUFFIX}"
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def delete(self) -> None:
        shutil.rmtree(self.directory / f"{self.run_id}{RUN_DIR_SUFFIX}", ignore_errors=True)
        self.path.unlink(missing_ok=True)
        release_run(self.run_id, self.directory)

    def record(self, kind: str, **fields: Any) -> None:
        """Append one object (before it is created); the line is complete on disk when this returns."""
        entry = _check_entry({"kind": kind, **fields}, self.run_id, f"{kind} {fields.get('name', '')!r}")
        fd = _HELD.get(self.path)
        if fd is None:
            raise KernelError(f"run {self.run_id}: this process did not create the registry (or released it); "
                              f"only a run's owner records objects")
        line = (json.dumps(entry) + "\n").encode()
        if os.write(fd, line) != len(line):
            raise KernelError(f"run {self.run_id}: short write to {self.path} (is /run full?)")
        self.entries.append(entry)

    def record_pid(self, pid: int) -> None:
        """Remember a helper process this run started (with its start time, against pid reuse)."""
        self.record("pid", pid=pid, start=process_start_ticks(pid))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["kind"] == kind]

    @property
    def namespaces(self) -> list[str]:
        return [e["name"] for e in self.of_kind("netns")]

    def owner_alive(self) -> bool:
        """True if the owner pid still runs and is the same process (start time recorded)."""
        return self.owner_start is not None and process_start_ticks(self.owner_pid) == self.owner_start

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "owner_pid": self.owner_pid, "owner_start": self.owner_start,
                "entries": list(self.entries)}


def is_locked(path: Path) -> bool:
    """True if some open file holds an exclusive flock on `path` (a run in use)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def release_run(run_id: str, directory: Path = REGISTRY_DIR) -> None:
    """Close this process's handle on run `run_id`'s registry, which drops its lock: the run
    stays registered but nobody is using it (`pi2 up` once the fabric is built), or it is gone."""
    fd = _HELD.pop(directory / f"{run_id}{REGISTRY_SUFFIX}", None)
    if fd is not None:
        os.close(fd)


def busy_message(reg: RunRegistry) -> str:
    command = command_line(reg.owner_pid) or "a pi2 process"
    return (f"run {reg.run_id} (pid {reg.owner_pid}: {command}) is using the kernel fabric; two runs at once share "
            f"the CPUs and spoil each other's timing: wait for it to finish, or stop it with `sudo pi2 down {reg.run_id}`")


def _names_in_use() -> set[str]:
    """Interface names of the root namespace and the names under /run/netns: a new run id must
    match none, so no name the run records (and later removes) can already belong to someone."""
    names = {name for _, name in socket.if_nameindex()}
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        names |= set(os.listdir(netns_dir))
    return names


class _Lock:
    """flock(2) on `path` for a `with` block (made if missing, never through a symlink)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> "_Lock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)

"""Run one command inside a user-mode-linux guest: a full kernel (netem, cbs, police, gact, flower, openvswitch)
as an ordinary process on hosts whose own kernel lacks them.

Why UML: the CI machine's kernel has no netem/police/flower/openvswitch and /dev/kvm cannot run a normal kernel,
while Debian's `user-mode-linux` ships a 6.1 kernel with all of them as modules (spec/kernel-notes.md, "Kernels
with everything"). The guest boots with the host's / as its root through hostfs, mounted read-only, so the same
interpreter, virtualenv and checkout work inside without building an image; writes go to tmpfs (/tmp, /run) or to
one host directory shared read-write for the command's output and exit status.

Lifetime is owned by PID: `linux.uml` starts in a new session, so it leads a process group holding every helper
process it forks. When it exits (or the hard timeout fires) the group is SIGKILLed while the leader is still an
unreaped zombie, which pins its PID and group id so the signal cannot reach anyone else's process; the leader is
reaped only after the group is empty. The temporary directory (init script, shared dir, uml_dir) is removed.

The guest is a test bench, not a sandbox: it runs as the host user that started it, and its root could mount
any host path read-write through hostfs.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed.errors import GuestError

UML_KERNEL = "linux.uml"  # Debian package user-mode-linux
UML_MODULES_ROOT = Path("/usr/lib/uml/modules")

# What standard kernels add over the CI kernel (spec/kernel-notes.md), plus ipv6 (built into distribution kernels,
# a module here, and nothing autoloads it for /proc/sys/net/ipv6): loaded up front so a missing one fails the run
# loudly; anything else (sch_prio, bridge, ifb, ...) is autoloaded on demand through the modprobe wrapper.
DEFAULT_MODULES: tuple[str, ...] = ("sch_netem", "sch_cbs", "act_police", "act_gact", "cls_flower", "openvswitch",
                                    "veth", "ipv6")

# Guest paths the init script covers with fresh filesystems: a host working directory below them would be invisible
# inside. Below the tmpfs ones the init script mounts the working directory again from the host (hostfs, read-only),
# so a checkout in /tmp works; below the others it cannot.
_GUEST_OVERLAID = ("/proc", "/sys", "/dev")
_GUEST_TMPFS = ("/tmp", "/run")
_SHARE = "/run/pi2-guest/share"  # guest mount point of the host's shared directory
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORWARDED_PREFIX = "PI2_"  # host variables passed into the guest unchanged (e.g. PI2_PROFILE=netem)
_CONSOLE_TAIL_LINES = 15
_GROUP_EXIT_WAIT_S = 5.0  # after SIGKILL, how long the process group may take to disappear


@dataclass(frozen=True)
class GuestSpec:
    """One guest run: boot, load `modules`, run `command` in `cwd` with `env`, power off.

    `mem_mb` is the guest's RAM (the kernel's `mem=` in MiB; the digits run needs ~1 GiB), `timeout_s` the hard
    wall-clock limit for boot + command + poweroff, after which the guest is killed.
    """

    command: tuple[str, ...]
    cwd: str = field(default_factory=os.getcwd)
    env: tuple[tuple[str, str], ...] = ()
    mem_mb: int = 1024
    timeout_s: float = 300.0
    modules: tuple[str, ...] = DEFAULT_MODULES

    def __post_init__(self) -> None:
        if len(self.command) == 0:
            raise GuestError("guest: no command given; pass it after `--`, e.g. `pi2 guest -- tc qdisc show`")
        if not 64 <= self.mem_mb <= 65536:
            raise GuestError(f"guest: mem_mb must be in 64..65536 MiB, got {self.mem_mb}")
        if not self.timeout_s > 0:
            raise GuestError(f"guest: timeout_s must be > 0 seconds, got {self.timeout_s}")
        if not os.path.isabs(self.cwd):
            raise GuestError(f"guest: cwd must be an absolute path, got {self.cwd!r}")
        for top in _GUEST_OVERLAID:
            if self.cwd == top or self.cwd.startswith(top + "/"):
                raise GuestError(
                    f"guest: working directory {self.cwd} is under {top}, which the guest covers with its own "
                    f"filesystem; run from a directory outside {', '.join(_GUEST_OVERLAID)}")
        for name in self.modules:
            if not _MODULE_NAME.match(name):
                raise GuestError(f"guest: module name {name!r} is not a kernel module name (letters, digits, _ and -)")
        for name, _ in self.env:
            if not _ENV_NAME.match(name):
                raise GuestError(f"guest: environment variable name {name!r} is invalid; use NAME=VALUE")


@dataclass(frozen=True)
class GuestResult:
    """What a guest run produced. `boot_s` is guest uptime (its own clock) when the command started."""

    command: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str
    kernel_release: str
    modules: tuple[str, ...]
    boot_s: float
    wall_s: float        # host wall clock from spawning linux.uml to its exit
    uml_pid: int         # host PID of the linux.uml process (gone by the time this is returned)

    def to_dict(self) -> dict[str, object]:
        return {"command": list(self.command), "exit_status": self.exit_status, "stdout": self.stdout,
                "stderr": self.stderr, "kernel_release": self.kernel_release, "modules": list(self.modules),
                "boot_s": self.boot_s, "wall_s": self.wall_s, "uml_pid": self.uml_pid}


def find_uml_kernel() -> tuple[Path, str]:
    """Locate `linux.uml` and its module tree; return (binary, release). GuestError says what to install."""
    binary = shutil.which(UML_KERNEL)
    if binary is None:
        raise GuestError(f"guest: {UML_KERNEL} not found on PATH; install the Debian package user-mode-linux")
    probe = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL, start_new_session=True)
    release = probe.stdout.strip()
    if probe.returncode != 0 or not release:
        raise GuestError(f"guest: `{binary} --version` failed (status {probe.returncode}): {probe.stderr.strip()}")
    if not (UML_MODULES_ROOT / release).is_dir():
        raise GuestError(f"guest: no modules for UML kernel {release} under {UML_MODULES_ROOT}; "
                         "reinstall the Debian package user-mode-linux")
    return Path(binary), release


def guest_environment(extra: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
    """The command's environment inside the guest.

    The running interpreter's directory leads PATH, so `python` and `pi2` in the guest are this very virtualenv
    (same path: the host's / is the guest's root). Bytecode and caches must not be written to the read-only
    root, HOME is a tmpfs, host variables named PI2_* are forwarded, then `extra` overrides.
    """
    env: dict[str, str] = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp/home",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "XDG_CACHE_HOME": "/tmp/home/.cache",
        "MPLCONFIGDIR": "/tmp/home/.config/matplotlib",
        "PI2_IN_GUEST": "1",
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_PREFIX)})
    env.update(dict(extra))
    return tuple(sorted(env.items()))


def _init_script(spec: GuestSpec, share_host: Path, release: str) -> str:
    """The guest's PID 1: mount scratch filesystems, load modules, run the command, record its status, power off.

    It never stops early (no `set -e`): every path ends in the power-off, and a missing status file tells the
    host the guest broke before the command finished. The power-off is reboot(2) with
    LINUX_REBOOT_CMD_POWER_OFF from this interpreter, what `poweroff -f` does, because `poweroff` comes
    from systemd-sysv, which a minimal Debian root does not have (and installing it would replace init).
    """
    q = shlex.quote
    env = " ".join(q(f"{k}={v}") for k, v in guest_environment(spec.env))
    modules = " ".join(q(m) for m in spec.modules)
    return f"""#!/bin/sh
# PID 1 of a pi2 user-mode-linux guest (generated by testbed.kernel.guest; deleted after the run).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# / is the host's root, read-only; /dev is devtmpfs (CONFIG_DEVTMPFS_MOUNT). Everything writable is tmpfs.
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/shm /dev/pts /run/netns /run/pi2-guest/share /run/pi2-guest/mods/lib/modules /tmp/home
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t devpts devpts /dev/pts
mount -t hostfs -o {q(str(share_host))} hostfs {_SHARE}
S={_SHARE}
# modprobe -d DIR looks in DIR/lib/modules/<release>; the wrapper makes the kernel's on-demand loads
# (e.g. `tc qdisc add ... prio`) use the UML tree too.
ln -s {q(str(UML_MODULES_ROOT / release))} /run/pi2-guest/mods/lib/modules/{q(release)}
printf '#!/bin/sh\\nexec /sbin/modprobe -d /run/pi2-guest/mods "$@"\\n' > /run/pi2-guest/modprobe
chmod 0755 /run/pi2-guest/modprobe
echo /run/pi2-guest/modprobe > /proc/sys/kernel/modprobe
for m in {modules}; do
  /sbin/modprobe -d /run/pi2-guest/mods "$m" 2>>"$S/modprobe.err" || echo "$m" >> "$S/modprobe.failed"
done
{_remount_cwd(spec.cwd)}ip link set lo up
cut -d' ' -f1 /proc/uptime > "$S/boot_s"
cd {q(spec.cwd)} && env -i {env} {shlex.join(spec.command)} < /dev/null > "$S/stdout" 2> "$S/stderr"
echo $? > "$S/status.tmp" && mv "$S/status.tmp" "$S/status"
sync
umount "$S"
exec {q(sys.executable)} -c {q(_POWER_OFF)}
"""


# reboot(2)'s LINUX_REBOOT_CMD_POWER_OFF (linux/reboot.h); glibc's reboot() passes both magic numbers.
_POWER_OFF = "import ctypes; ctypes.CDLL(None).reboot(0x4321FEDC)"


def _remount_cwd(cwd: str) -> str:
    """Init-script lines that bring a host working directory below a guest tmpfs back, read-only."""
    if not any(cwd == top or cwd.startswith(top + "/") for top in _GUEST_TMPFS):
        return ""
    q = shlex.quote
    return f"mkdir -p {q(cwd)}\nmount -r -t hostfs -o {q(cwd)} hostfs {q(cwd)}\n"


def _uml_argv(binary: Path, spec: GuestSpec, init: Path, uml_dir: Path, umid: str) -> list[str]:
    # con0 is the kernel console (boot log) on linux.uml's stdout; no other consoles, no block devices.
    return [str(binary), f"mem={spec.mem_mb}M", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro",
            f"init={init}", "con=null", "con0=fd:0,fd:1", "ssl=null", f"umid={umid}", f"uml_dir={uml_dir}"]


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`, other than its leader (PID `pgid`, a zombie here)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # exited while scanning
            continue
        # /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may contain spaces, so split after ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _end_process_group(proc: subprocess.Popen[bytes], running: bool) -> None:
    """Stop linux.uml and every process it forked, then reap it.

    A still-running guest first gets SIGTERM: UML's host handler kills and reaps its own helper processes
    before exiting. Then the whole group gets SIGKILL. The leader is unreaped until the end, so its PID (also the
    group id) cannot be reused meanwhile and the signals only ever reach processes this run started.
    """
    if running:
        os.kill(proc.pid, signal.SIGTERM)
        _wait_exit(proc, _GROUP_EXIT_WAIT_S)
    os.killpg(proc.pid, signal.SIGKILL)  # the unreaped leader keeps the group alive, so this cannot fail
    deadline = time.monotonic() + _GROUP_EXIT_WAIT_S
    survivors = _group_members(proc.pid)
    while survivors and time.monotonic() < deadline:
        time.sleep(0.02)  # supervision poll, not a data-path delay
        survivors = _group_members(proc.pid)
    proc.wait()
    if survivors:
        raise GuestError(f"guest: processes {survivors} of linux.uml (pid {proc.pid}) survived SIGKILL")


def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait until linux.uml exits WITHOUT reaping it (pidfd becomes readable at exit); False on timeout."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(pidfd)


def _console_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return " | ".join(line.strip() for line in lines[-_CONSOLE_TAIL_LINES:] if line.strip())


def run_in_guest(spec: GuestSpec) -> GuestResult:
    """Boot a UML guest, run `spec.command` in it, and return its output and exit status.

    The guest is always powered off or killed, every host process it started is gone, and the temporary
    directory is removed before this returns or raises. GuestError on boot failure, module failure or timeout.
    """
    if not os.path.isdir(spec.cwd):
        raise GuestError(f"guest: working directory {spec.cwd} does not exist on the host (the guest's root)")
    binary, release = find_uml_kernel()
    work = Path(tempfile.mkdtemp(prefix="p2guest-"))
    try:
        share, uml_dir = work / "share", work / "uml"
        share.mkdir()
        uml_dir.mkdir()
        init = work / "init.sh"
        init.write_text(_init_script(spec, share, release))
        init.chmod(0o755)
        console = work / "console.log"
        started = time.monotonic()
        with console.open("wb") as log:
            proc = subprocess.Popen(_uml_argv(binary, spec, init, uml_dir, work.name), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finished = False
        try:
            finished = _wait_exit(proc, spec.timeout_s)
            wall_s = time.monotonic() - started
        finally:
            _end_process_group(proc, running=not finished)
        if not finished:
            raise GuestError(f"guest: `{shlex.join(spec.command)}` did not finish within {spec.timeout_s:g} s; "
                             f"guest killed (raise --timeout). Console: {_console_tail(console)}")
        failed = share / "modprobe.failed"
        if failed.exists():
            raise GuestError(f"guest: UML kernel {release} could not load module(s) "
                             f"{failed.read_text().split()}: {(share / 'modprobe.err').read_text().strip()}")
        status = share / "status"
        if not status.exists():
            raise GuestError(f"guest: linux.uml exited (status {proc.returncode}) before the command finished. "
                             f"Console: {_console_tail(console)}")
        return GuestResult(
            command=spec.command,
            exit_status=int(status.read_text()),
            stdout=(share / "stdout").read_bytes().decode(errors="replace"),
            stderr=(share / "stderr").read_bytes().decode(errors="replace"),
            kernel_release=release,
            modules=spec.modules,
            boot_s=float((share / "boot_s").read_text()),
            wall_s=wall_s,
            uml_pid=proc.pid,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

"""Files written whole or not at all, and never through a link someone else planted.

pi2 often runs as root and writes into directories other users can write to (/tmp, a shared
results directory). Opening the target path with ``open(path, "w")`` there follows a symlink an
attacker placed at that name (root would then overwrite any file), and a kill half-way leaves a
truncated file that the next reader takes for a plan or a capture. So the data goes to a fresh
temporary file next to the target (O_CREAT|O_EXCL|O_NOFOLLOW: a name nobody else made, opened
without following a link), is flushed, and is renamed over the target: rename(2) replaces
whatever directory entry is there, a symlink included, without following it, and readers see
either the old file or the complete new one.
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path
from typing import Any

from testbed.errors import OutputError

def write_atomic(path: str | Path, data: bytes | str, mode: int = 0o644) -> Path:
    """Write `data` to `path` atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: directory {parent} does not exist; create it first (mkdir -p {parent})")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    tmp = parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {parent} ({exc.strerror}); choose a writable directory") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: writing failed ({exc.strerror}); choose another path") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_figure(fig: Any, path: str | Path, dpi: int) -> Path:
    """A matplotlib figure rendered in memory (format from the suffix, PNG by default), then
    written with `write_atomic`."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix[1:].lower() or "png", dpi=dpi)
    return write_atomic(path, buffer.getvalue())


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Fail now, before any long work, if `path` cannot become a directory we write into
    (e.g. ``--plots /dev/null/x``): it exists as a directory we may write, or can be made."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{what} {path}: {probe} is not a directory; choose a directory path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: {probe} is not writable; choose a writable directory")
    return path


def check_output_file(path: str | Path, what: str) -> Path:
    """Fail now, before any long work, if `write_atomic(path, …)` would fail for want of a
    writable directory, or because `path` is a directory."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise OutputError(f"{what} {path}: directory {path.parent} does not exist; create it first "
                          f"(mkdir -p {path.parent})")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: directory {path.parent} is not writable; choose another")
    return path

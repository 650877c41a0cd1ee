"""--cluster's values: real host lists (localhost first) and emulated:N."""

from __future__ import annotations

import pytest

from testbed.cluster.hosts import ClusterError, parse_cluster


def test_emulated_hosts_are_localhost_and_numbered_namespaces():
    spec = parse_cluster("emulated:3")
    assert spec.emulated and spec.names == ("localhost", "e1", "e2")
    assert parse_cluster("emulated:1").names == ("localhost",)


def test_real_hosts_keep_their_order():
    spec = parse_cluster("localhost,server1,10.0.0.7")
    assert not spec.emulated and spec.names == ("localhost", "server1", "10.0.0.7")


@pytest.mark.parametrize("text, message", [
    ("server1,localhost", "first host must be localhost"),
    ("localhost,a,a", "named twice"),
    ("localhost,bad name", "bad host name"),
    ("emulated:0", "emulated:N with N in 1..9"),
    ("emulated:12", "emulated:N with N in 1..9"),
])
def test_bad_cluster_specs_say_how_to_fix_them(text, message):
    with pytest.raises(ClusterError, match=message):
        parse_cluster(text)

"""`pi2 trace`: a pcap's spikes as a table, JSON and a raster PNG; bad files give one-line errors."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from testbed.cli import pi2
from testbed.plan.wire import KIND_PRIMER, SpikeHeader
from testbed.traffic.packets import spike_frame
from testbed.traffic.pcap import write_pcap

HEADERS = [SpikeHeader(layer=1, source=i, sign=i % 2, sample=7, seq=i) for i in range(4)]
HEADERS.append(SpikeHeader(layer=1, source=2, sign=0, sample=7, seq=4, kind=KIND_PRIMER))
T0_NS = 1_760_000_000_000_000_000


def _pcap(path):
    frames = [spike_frame("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2", h) for h in HEADERS]
    write_pcap(path, T0_NS + np.arange(len(frames)) * 250_000, frames)
    return path


def test_trace_json_lists_every_spike(tmp_path):
    result = CliRunner().invoke(pi2, ["trace", str(_pcap(tmp_path / "s.pcap")), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["source"] for r in rows] == [0, 1, 2, 3, 2]
    assert [r["sign"] for r in rows] == ["t+", "t-", "t+", "t-", "t+"]
    assert [r["kind"] for r in rows] == ["spike"] * 4 + ["primer"]
    assert rows[2]["t_ms"] == 0.5 and rows[2]["t_ns"] == T0_NS + 500_000


def test_trace_table_and_raster(tmp_path):
    png = tmp_path / "raster.png"
    result = CliRunner().invoke(pi2, ["trace", str(_pcap(tmp_path / "s.pcap")), "--raster", str(png)])
    assert result.exit_code == 0, result.output
    assert "5 spike frames" in result.output and "primer" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trace_rejects_a_non_pcap(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, this text file is certainly not a packet capture\n")
    result = CliRunner().invoke(pi2, ["trace", str(bad)])
    assert result.exit_code != 0
    assert "not a classic pcap" in str(result.exception)

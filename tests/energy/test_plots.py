"""The three figures are written as PNG files."""

from __future__ import annotations

from testbed.energy.plots import write_plots
from testbed.energy.report import energy_for


def test_write_plots(tmp_path):
    report, table = energy_for(None, "mlp:64-16-10", [1, 1], "chiplet-aer", 1000.0)
    paths = write_plots(report, table, tmp_path / "plots")
    assert [p.name for p in paths] == ["energy_vs_pj_per_bit.png", "eta_vs_bandwidth.png", "brain_power_generations.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000

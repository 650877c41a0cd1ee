"""The report: comparison, sweeps and the brain projection agree with the model."""

from __future__ import annotations

import pytest

from testbed.energy.model import brain_workload, fabric, pi2_energy, workload_from_arch
from testbed.energy.platforms import load_platforms
from testbed.energy.report import energy_for, energy_report, hundreds_of_watts
from testbed.errors import ModelError

TABLE = load_platforms()


@pytest.mark.parametrize("power, band", [(20.0, "below"), (99.9, "below"), (100.0, "within"), (999.0, "within"), (1000.0, "above")])
def test_hundreds_of_watts_band(power, band):
    assert hundreds_of_watts(power) == band


def test_power_is_energy_times_rate():
    wl = workload_from_arch("mlp:64-16-10", [1, 1])
    fab = fabric(TABLE, "chiplet-aer")
    slow, fast = (energy_report(wl, TABLE, fab, r).to_dict()["systems"][0] for r in (10.0, 1000.0))
    assert slow["energy_j"] == fast["energy_j"]
    assert fast["power_w"] == pytest.approx(100 * slow["power_w"]) == pytest.approx(1000 * fast["energy_j"])


def test_sweeps_cover_every_system_and_move_pi2_energy_with_pj_per_bit():
    report = energy_report(workload_from_arch("mlp:64-16-10", [1, 1]), TABLE, fabric(TABLE, "chiplet-aer"), 1000.0)
    names = {s.system for s in report.systems}
    assert all(set(row["systems"]) == names for row in report.sweep_pj_per_bit + report.sweep_bandwidth)
    pi2 = report.systems[0].system
    energies = [row["systems"][pi2]["energy_j"] for row in report.sweep_pj_per_bit]
    assert all(a < b for a, b in zip(energies, energies[1:]))


def test_brain_projection_is_the_model_at_brain_scale():
    report, _ = energy_for(None, "brain", None, "chiplet-aer", 1.0, brain={"rate_hz": 2.0})
    assert report.rate_hz == 1.0 and report.brain is not None
    wl = brain_workload(TABLE.brain, rate_hz=2.0)
    for row in report.brain.rows:
        watts = pi2_energy(wl, fabric(TABLE, row["generation"])).total_j
        assert row["power_w"] == pytest.approx(watts)
        low, high = TABLE.brain.rate_range_hz
        assert row["power_w_at_rate_low"] == pytest.approx(watts * low / 2.0)
        assert row["power_w_at_rate_high"] == pytest.approx(watts * high / 2.0)
        assert row["vs_hundreds_of_watts"] == hundreds_of_watts(watts)
    assert report.brain.differential_w == pytest.approx(
        pi2_energy(brain_workload(TABLE.brain, rate_hz=2.0, differential=True), report.fabric).total_j)


@pytest.mark.parametrize("net, spec, ks", [(None, None, None), ("x.npz", "brain", None), (None, "mlp:4-2", None)])
def test_energy_for_refuses_ambiguous_requests(net, spec, ks):
    with pytest.raises(ModelError):
        energy_for(net, spec, ks, "chiplet-aer", 1000.0)


def test_energy_for_refuses_a_bad_rate():
    with pytest.raises(ModelError, match="rate"):
        energy_for(None, "mlp:4-2", [1], "chiplet-aer", 0.0)

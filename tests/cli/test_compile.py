"""`pi2 compile`: the `--show` summary, and `--loss`: the drop probability reaches the plan where the profile
realises it, and is a one-line error where it cannot be realised exactly."""

from __future__ import annotations

import json

from click.testing import CliRunner

from testbed.cli import pi2
from testbed.errors import PlanError
from testbed.infer.pipeline import BUNDLED_NETWORK
from testbed.plan.fabric_plan import load_plan
from testbed.plan.tc import drop_probability


def test_loss_reaches_every_port_of_the_plan(tmp_path):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(pi2, ["compile", str(BUNDLED_NETWORK), "--profile", "shaper", "--tau", "20ms",
                                      "--calibration", "50", "--loss", "0.1", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert [layer["loss"] for layer in json.loads(result.output)["layers"]] == [0.1, 0.1]
    plan = load_plan(out)
    assert {drop_probability(p.gate_tc) for layer in plan.layers for p in layer.ports} == {0.1}


def test_show_prints_every_layer_and_the_loss_within_80_columns():
    result = CliRunner(env={"COLUMNS": "80"}).invoke(pi2, ["compile", str(BUNDLED_NETWORK), "--profile", "shaper",
                                                           "--tau", "20ms", "--calibration", "50", "--loss", "0.1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in result.output
    words = " ".join(result.output.split())  # rich wraps the header lines at 80 columns
    assert "spike loss 10 % per port" in words and "injected," in words and "shaped;" in words
    classes = next(line for line in lines if line.strip().startswith("delay classes")).split()[2:]
    assert len(classes) == 2 and all(count.isdigit() for count in classes)


def test_loss_that_is_not_one_in_n_or_not_realised_is_a_one_line_error():
    for profile, loss, words in (("full", "0.3", "the nearest are 0.333333 (N = 3) and 0.25 (N = 4)"),
                                 ("netem", "0.5", "its loss kind 'netem-loss' is not built by the compiler")):
        result = CliRunner().invoke(pi2, ["compile", str(BUNDLED_NETWORK), "--profile", profile, "--tau", "20ms",
                                          "--calibration", "50", "--loss", loss])
        assert isinstance(result.exception, PlanError), result.output
        assert words in str(result.exception) and "\n" not in str(result.exception)


def test_simulate_predicts_a_busy_fabric_cpu_beside_the_closed_form(tmp_path):
    plan = tmp_path / "plan.json"
    made = CliRunner().invoke(pi2, ["compile", str(BUNDLED_NETWORK), "--tau", "2ms", "--calibration", "50",
                                    "-o", str(plan)])
    assert made.exit_code == 0, made.output
    reports = {}
    for cost in ("0", "40"):
        result = CliRunner().invoke(pi2, ["simulate", str(plan), "--limit", "60", "--packet-cost-us", cost, "--json"])
        assert result.exit_code == 0, result.output
        reports[cost] = json.loads(result.output)
    idle, busy = reports["0"], reports["40"]
    assert idle["predicted_agreement"] == 1.0 and idle["predicted_kth_late_us_p99"] == [0.0, 0.0]
    assert idle["predicted_timed_out_spikes"] == idle["timed_out_spikes"]
    # 40 µs a packet: a sample's ≈1,500 copies take 60 ms, far more than its 2 ms τ allows
    assert busy["predicted_agreement"] < 1.0 and busy["predicted_timed_out_spikes"] > 0
    assert busy["sim_accuracy"] == idle["sim_accuracy"]  # the closed form beside it is unchanged

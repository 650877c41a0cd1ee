"""`pi2 infer` through click on the real kernel: the bundled network, a few samples, with spike loss."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from testbed.cli import pi2
from testbed.kernel import netns

pytestmark = pytest.mark.root


def test_infer_with_loss_reports_the_spikes_each_layer_lost():
    before = set(netns.list_names())
    result = CliRunner().invoke(pi2, ["infer", "--profile", "shaper", "--limit", "4", "--loss", "0.5", "--tau", "6ms",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["samples"], report["profile"], report["loss"]) == (4, "shaper", 0.5)
    for gates in report["gates"]:
        # Each port gets every kept synapse's spike; half of them are lost before the gate counts them.
        seen = (gates["spikes_counted"] + gates["spikes_dropped_after_k"] + gates["spikes_dropped_late"]
                + gates["spikes_dropped_lost"])
        assert 0.35 < gates["spikes_dropped_lost"] / seen < 0.65, gates
    assert not set(netns.list_names()) - before  # torn down (names other runs removed meanwhile do not count)


def test_infer_prints_tables_that_fit_80_columns():
    result = CliRunner(env={"COLUMNS": "80"}).invoke(pi2, ["infer", "--profile", "shaper", "--limit", "2",
                                                           "--loss", "0.5", "--tau", "6ms"])
    assert result.exit_code == 0, result.output
    assert max(map(len, result.output.splitlines())) <= 80 and "…" not in result.output
    words = " ".join(result.output.split())
    assert "spike loss 50 %" in words and "lose different spikes" in words
    lost = next(line for line in result.output.splitlines() if line.strip().startswith("spikes dropped lost"))
    assert all(int(n) > 0 for n in lost.split()[3:])  # one count per layer


def test_late_slots_are_a_figure_not_a_warning(capsys):
    """Every healthy run has some slots that start late; they used to print in yellow beside the
    real faults (receiver drops, refused frames), which now appear only when there are any."""
    from dataclasses import replace

    from testbed.cli.infer import render
    from testbed.infer.pipeline import BUNDLED_NETWORK, InferOptions, infer

    report, _, _ = infer(BUNDLED_NETWORK, InferOptions(profile="shaper", limit=2, tau_us=6000.0))
    render(replace(report, late_slots=7, receiver_drops=0, injector_refused=0))
    out = capsys.readouterr().out
    assert "injection slots started late: 7" in out and "receiver drops" not in out
    render(replace(report, late_slots=0, receiver_drops=3, injector_refused=0))
    assert "receiver drops 3" in capsys.readouterr().out

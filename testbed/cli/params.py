"""click parameter types shared by commands."""

from __future__ import annotations

import re

import click

from testbed.plan.compiler import DEFAULT_LEAD, DEFAULT_PRUNE_MARGIN, DEFAULT_TAU_US

_UNITS_US = {"us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(us|µs|ms|s)\s*$")


class Duration(click.ParamType):
    """A duration like 500us, 1ms, 2.5ms or 0.1s, converted to microseconds."""

    name = "duration"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, (int, float)):
            return float(value)
        match = _DURATION.match(str(value))
        if match is None or float(match.group(1)) <= 0:
            self.fail(f"{value!r} is not a positive duration; write e.g. 500us, 1ms or 0.5s", param, ctx)
        return float(match.group(1)) * _UNITS_US[match.group(2)]


DURATION = Duration()


class PruneMargin(click.ParamType):
    """A margin in model units (≥ 0), or "off"."""

    name = "margin|off"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if value is None or isinstance(value, float):
            return value
        if str(value).strip().lower() == "off":
            return None
        try:
            margin = float(value)
        except ValueError:
            margin = -1.0
        if not margin >= 0:
            self.fail(f"{value!r} is neither a margin ≥ 0 (model units) nor 'off'", param, ctx)
        return margin


class LogitScale(click.ParamType):
    """λ > 0 (a finite number), or "auto" (None: calibrate λ to the teacher's logit spread)."""

    name = "λ|auto"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if value is None or isinstance(value, float):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            scale = float(value)
        except ValueError:
            scale = float("nan")
        if not 0 < scale < float("inf"):
            self.fail(f"{value!r} is neither a finite λ > 0 nor 'auto'", param, ctx)
        return scale


def compile_options(command):  # type: ignore[no-untyped-def]
    """--profile, --tau, --relay, --prune, --lead and --loss: how a network is compiled into a plan (pi2 compile,
    pi2 infer)."""

    for option in reversed((
        click.option("--profile", default="auto", show_default=True,
                     help="tc profile: auto (probe this kernel; needs root), netem, shaper, full, or a YAML path."),
        click.option("--tau", "tau_us", type=DURATION, default=f"{DEFAULT_TAU_US / 1e3:g}ms", show_default=True,
                     help="Wall-clock length of one model time unit (e.g. 500us, 2ms). Larger τ gives the kernel "
                          "more time per burst of spikes (more precise), smaller τ more samples/s."),
        click.option("--relay", "relay_us", type=DURATION, default="3ms", show_default=True,
                     help="Time the relay gets to decode a layer before the next layer's injections."),
        click.option("--prune", "prune_margin", type=PruneMargin(), default=str(DEFAULT_PRUNE_MARGIN), show_default=True,
                     help="Leave out synapses whose arrival never came within this many model units of their "
                          "port's K-th earliest on the calibration data (they cannot change the port's output "
                          "there, yet cost the kernel two shaped packets per sample); 'off' keeps every synapse."),
        click.option("--lead", type=click.FloatRange(0), default=DEFAULT_LEAD, show_default=True,
                     help="Spread each layer's events over at least this many model units ahead of their times "
                          "(more where the slowest layer leaves room), each event's delay classes holding it that "
                          "much longer (arrivals unchanged): the zero inputs' burst at T0 becomes a train the "
                          "kernel enqueues on time. 0 sends every event at its time."),
        click.option("--loss", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                     help="Drop each spike at each neuron port with this probability, 1/N for an integer N (e.g. "
                          "0.1), before its gate counts it: the shaper profile's gate drops it (eBPF), the full "
                          "profile's gact action does; the simulator drops with the same probability."),
    )):
        command = option(command)
    return command

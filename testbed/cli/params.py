"""click parameter types shared by commands."""

from __future__ import annotations

import re

import click

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


def compile_options(command):  # type: ignore[no-untyped-def]
    """--profile, --tau and --relay: how a network is compiled into a plan (pi2 compile, pi2 infer)."""
    for option in reversed((
        click.option("--profile", default="auto", show_default=True,
                     help="tc profile: auto (probe this kernel; needs root), netem, shaper, full, or a YAML path."),
        click.option("--tau", "tau_us", type=DURATION, default="1ms", show_default=True,
                     help="Wall-clock length of one model time unit (e.g. 500us, 2ms)."),
        click.option("--relay", "relay_us", type=DURATION, default="3ms", show_default=True,
                     help="Time the relay gets to decode a layer before the next layer's injections."),
    )):
        command = option(command)
    return command

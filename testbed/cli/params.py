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

"""click parameter types shared by commands."""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import click

from testbed.plan.compiler import DEFAULT_BANKS, DEFAULT_DELAY_LINES, DEFAULT_LEAD, DEFAULT_PRUNE_MARGIN, DEFAULT_RELAY_US, DEFAULT_TAU_US
from testbed.plan.fabric_plan import DELAY_LINE_KINDS

_UNITS_US = {"us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(us|µs|ms|s)\s*$")


class Duration(click.ParamType):
    """A duration like 500us, 1ms, 2.5ms or 0.1s, converted to microseconds."""

    name = "duration"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, (int, float)):
            return float(value)
        match = _DURATION.match(str(value))
        if match is None or not 0 < float(match.group(1)) < math.inf:
            self.fail(f"{value!r} is not a positive duration; write e.g. 500us, 1ms or 0.5s", param, ctx)
        return float(match.group(1)) * _UNITS_US[match.group(2)]


DURATION = Duration()


class FiniteRange(click.FloatRange):
    """click.FloatRange, minus nan and ±inf (which compare False with every bound, so it let them through)."""

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class DurationOrAuto(Duration):
    """A duration, or "auto" (None): measure this machine for it (pi2 infer --tau auto)."""

    name = "duration|auto"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if value is None or str(value).strip().lower() == "auto":
            return None
        return super().convert(value, param, ctx)


DURATION_OR_AUTO = DurationOrAuto()


class NumberOr(click.ParamType):
    """A number that `accept`s, or one word that stands for None ("--prune off", "--logit-scale auto")."""

    def __init__(self, word: str, accept: Callable[[float], bool], expected: str, metavar: str) -> None:
        self.word, self.accept, self.expected = word, accept, expected
        self.name = f"{metavar}|{word}"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if value is None or isinstance(value, float):
            return value
        if str(value).strip().lower() == self.word:
            return None
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not self.accept(number):
            self.fail(f"{value!r} is neither {self.expected} nor {self.word!r}", param, ctx)
        return number


PRUNE_MARGIN = NumberOr("off", lambda m: m >= 0, "a margin ≥ 0 (model units)", "margin")
LOGIT_SCALE = NumberOr("auto", lambda v: 0 < v < math.inf, "a finite λ > 0", "λ")


def argparse_type(param_type: click.ParamType) -> Callable[[str], Any]:
    """One of these types as an argparse `type` (the benchmarks): bad values are usage errors, not tracebacks."""

    def convert(text: str) -> Any:
        try:
            return param_type.convert(text, None, None)
        except click.BadParameter as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return convert


TAU_HELP = ("Wall-clock length of one model time unit (e.g. 500us, 2ms). Larger τ gives the kernel more time per "
            "burst of spikes (more precise), smaller τ more samples/s.")
AUTO_TAU_HELP = (" 'auto': before the run, measure this machine's kernel at a few τ (training samples, real load) "
                 "and take the smallest whose arrival errors keep the decisions (testbed.infer.autotau); the "
                 "report says which τ and why.")


def compile_options(command=None, *, auto_tau: bool = False):  # type: ignore[no-untyped-def]
    """--profile, --tau, --relay, --prune, --lead, --loss and --delay-lines: how a network is compiled into a plan (pi2 compile;
    pi2 infer, which with `auto_tau` takes --tau auto and defaults to it)."""
    if command is None:
        return lambda cmd: compile_options(cmd, auto_tau=auto_tau)
    tau = (click.option("--tau", "tau_us", type=DURATION_OR_AUTO, default="auto", show_default=True,
                        help=TAU_HELP + AUTO_TAU_HELP) if auto_tau else
           click.option("--tau", "tau_us", type=DURATION, default=f"{DEFAULT_TAU_US / 1e3:g}ms", show_default=True,
                        help=TAU_HELP))
    for option in reversed((
        click.option("--profile", default="auto", show_default=True,
                     help="tc profile: auto (probe this kernel; needs root), netem, shaper, full, or a YAML path."),
        tau,
        click.option("--relay", "relay_us", type=DURATION, default=f"{DEFAULT_RELAY_US / 1e3:g}ms",
                     show_default=True,
                     help="Time the relay gets to decode a layer before the next layer's injections."),
        click.option("--prune", "prune_margin", type=PRUNE_MARGIN, default=str(DEFAULT_PRUNE_MARGIN), show_default=True,
                     help="Leave out synapses whose arrival never came within this many model units of their "
                          "port's K-th earliest on the calibration data (they cannot change the port's output "
                          "there, yet cost the kernel two shaped packets per sample); 'off' keeps every synapse."),
        click.option("--lead", type=FiniteRange(0), default=DEFAULT_LEAD, show_default=True,
                     help="Spread each layer's events over at least this many model units ahead of their times "
                          "(more where the slowest layer leaves room), each event's delay classes holding it that "
                          "much longer (arrivals unchanged): the zero inputs' burst at T0 becomes a train the "
                          "kernel enqueues on time. 0 sends every event at its time."),
        click.option("--loss", type=FiniteRange(0, 1, max_open=True), default=0.0, show_default=True,
                     help="Drop each port's copy of a spike with this probability, independently at every neuron "
                          "port, 1/N for an integer N (e.g. 0.1), before its gate counts it: the shaper profile's "
                          "gate drops it (eBPF), the full profile's gact action does; the simulator drops with the "
                          "same probability. (pi2 eval/train --event-loss loses a whole event, at every port.)"),
        click.option("--delay-lines", "delay_lines", type=click.Choice(DELAY_LINE_KINDS), default=DEFAULT_DELAY_LINES,
                     show_default=True,
                     help="shared: delay each event once per distinct delay its synapses need (an htb class per "
                          "line on the layer's injector link) and count the delayed spike in each member neuron "
                          "where it arrives (eBPF membership table); shared-clone: the same lines, the delayed spike "
                          "copied into each member neuron's port; per-synapse: a delay class per synapse on every "
                          "neuron port, behind a bridge flood."),
        click.option("--banks", type=click.Choice(["1", "2", "4", "8"]), default=str(DEFAULT_BANKS), show_default=True,
                     callback=lambda ctx, param, value: int(value),
                     help="Shared delay lines: give every line this many classes of one delay and send sample s "
                          "down bank s mod BANKS, so consecutive samples share no class and several samples are "
                          "in flight per layer (the period shrinks below the classes' drain). 1: one sample per "
                          "layer in flight."),
    )):
        command = option(command)
    return command


COMPILE_OPTIONS = {"profile": "--profile", "tau_us": "--tau", "relay_us": "--relay", "prune_margin": "--prune",
                   "lead": "--lead", "loss": "--loss", "delay_lines": "--delay-lines", "banks": "--banks"}


def refuse_compile_options(ctx: click.Context, plan_path: Path) -> None:
    """A plan is already compiled: compile options given with one would be silently ignored, so refuse them."""
    given = [flag for name, flag in COMPILE_OPTIONS.items()
             if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)]
    if given:
        raise click.UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} when compiling a network; {plan_path} is a compiled plan "
                               f"and runs as compiled: pass the network instead, or recompile the plan with "
                               f"`pi2 compile NET {' '.join(given)} … -o {plan_path.name}`")


def inject_cpu_option(ctx: click.Context, param: click.Parameter, value: int) -> int:
    """--inject-cpu: -1 or a CPU this process may run on."""
    allowed = sorted(os.sched_getaffinity(0))
    if value != -1 and value not in allowed:
        raise click.BadParameter(f"{value} is not a CPU this process may use ({allowed}); or -1 not to pin", ctx, param)
    return value

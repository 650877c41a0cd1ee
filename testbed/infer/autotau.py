"""`pi2 infer --tau auto`: the smallest time unit at which this machine's kernel keeps the decisions.

How precisely a kernel fabric realises a plan depends on the machine: its timers, how busy its CPUs
are, how many spikes a sample sends per τ. A τ too small for the machine does not fail loudly; spikes
arrive late, some miss their deadline, and decisions quietly differ from the plan's. So before a run
the fabric is measured, not assumed: for each candidate τ (a ladder, `TAU_LADDER_US`) the network is
compiled at that τ, built, and `TRIAL_SAMPLES` samples of its training split (never the test split)
stream through the kernel under a real sample's load. Every neuron output's error against the plan
is kept (the kernel's y = T⁺ − T⁻, each T the mean of a port's K earliest kernel-stamped arrivals,
less the simulated y given the same layer inputs), and the simulator, adding errors drawn from exactly
those onto every neuron's y (`testbed.sim.executor.simulate(noise_us=…)`), predicts on the calibration
set how often a decision would differ from the noiseless plan. A τ is safe when

- the trial run raised none of the report's warnings, its neuron events came within
  `TRIAL_LATENESS_SHARE` of the lateness the report allows (`testbed.infer.report.kernel_warnings`: every
  spike the neurons should count arrived, none timed out by its gate; median neuron-event error within
  0.05 τ),
- no port's K-th spike came later than its simulated K-th arrival by more than `TAIL_SHARE` of the
  layer's deadline margin (the deadline less the latest K-th arrival on the calibration set): the
  tail, not the median, is what makes a neuron miss spikes in a long run, and a trial of a few seconds
  sees only the start of it, so it may use only part of the margin, and
- the predicted agreement is at least `SAFE_AGREEMENT`.

The search starts at `START_TAU_US` and goes up until a τ is safe (a step at a time, or at once to
where the measured lateness would be allowed: `next_index`), then bisects the ladder between the largest
unsafe τ below and the safe one (safety grows with τ), so it ends on a safe τ whose next smaller τ was
tried and failed, or on the ladder's smallest. Each trial costs a build and a few seconds of traffic; a
loaded machine simply ends higher on the ladder. Measuring y rather than each T keeps what a late
burst does to a neuron's z⁺ and z⁻ alike (it cancels); drawing independently per neuron ignores any
correlation between neurons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from testbed.errors import KernelError, PlanError
from testbed.infer.report import LATE_FRACTION_OF_TAU, kernel_warnings, layer_stats, plan_loss
from testbed.infer.session import KernelRun
from testbed.plan.fabric_plan import FabricPlan
from testbed.sim.executor import simulate, simulate_layer

TAU_LADDER_US = (2000.0, 2500.0, 3000.0, 3500.0, 4000.0, 5000.0, 6000.0, 7000.0, 8000.0, 10000.0, 12000.0, 16000.0,
                 24000.0, 32000.0, 48000.0)
START_TAU_US = 4000.0
TRIAL_SAMPLES = 40  # training samples streamed through each candidate fabric
PREDICT_SAMPLES = 500  # calibration samples whose decisions the measured errors are applied to
NOISE_DRAWS = 4  # independent draws of the errors per calibration sample
SAFE_AGREEMENT = 0.998  # predicted agreement with the plan a τ must reach (the acceptance is 99 %; at 0.995,
#                        one of five whole-split runs on this machine agreed 98.3 %)
# A trial's neuron events must come within this share of the report's lateness bound, so that the whole
# run, longer and on other samples, stays within the bound itself (at 1.0, a τ whose trial came 0.045 τ
# late ran 0.07 τ late).
TRIAL_LATENESS_SHARE = 0.6
# The latest K-th spike of a trial may use at most this share of the deadline margin: in whole-split runs
# (360 samples) on this machine the latest K-th spike came up to 3× as late as in the 40-sample trial
# before it (at 0.5, a trial that used 0.41 of the margin was followed by a run that used 0.71).
TAIL_SHARE = 0.25


@dataclass(frozen=True)
class TauTrial:
    """One candidate τ, measured on the kernel."""

    tau_us: float
    samples: int
    period_us: float
    y_error_us_median: tuple[float, ...]  # per layer: kernel y − simulated y of the neurons, µs
    y_error_us_p99: tuple[float, ...]  # per layer, of |error|
    t_error_us_median: tuple[float, ...]  # per layer: kernel T − simulated T of the ports (the report's error)
    kth_late_us_max: tuple[float, ...]  # per layer: the latest K-th spike against its simulated arrival
    margin_us: tuple[float, ...]  # per layer: deadline − the latest simulated K-th arrival on the calibration set
    spikes_missing: int  # gated spikes the plan expects that did not arrive (timed out, lost, dropped)
    predicted_agreement: float  # simulated decisions with the measured errors vs the noiseless plan's
    verdict: str  # "safe", or why not

    @property
    def safe(self) -> bool:
        return self.verdict == "safe"


@dataclass(frozen=True)
class TauChoice:
    """The τ `pi2 infer --tau auto` picked, why, and every trial that led there."""

    tau_us: float
    reason: str
    trials: tuple[TauTrial, ...]

    def to_dict(self) -> dict[str, object]:
        return {"tau_us": self.tau_us, "reason": self.reason, "trials": [asdict(t) for t in self.trials]}


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


def output_errors_us(plan: FabricPlan, run: KernelRun, li: int) -> np.ndarray:
    """Kernel y − simulated y (µs) of every (sample, neuron) of layer `li` that both decoded, the
    simulation given the inputs the relay injected into the layer, so upstream errors do not count again."""
    predicted = simulate_layer(plan, plan.layers[li], run.inputs[li]).y
    both = np.isfinite(predicted) & np.isfinite(run.y[li])
    return (run.y[li] - predicted)[both] * plan.timing.tau_us


def judge(plan: FabricPlan, run: KernelRun, x_predict: np.ndarray) -> TauTrial:
    """A trial's verdict from what the kernel did at the plan's τ (`run`, on training samples) and
    the decisions its neurons' output errors predict on `x_predict`."""
    tau = plan.timing.tau_us
    errors = [output_errors_us(plan, run, li) for li in range(len(plan.layers))]
    plain = simulate(plan, x_predict)
    noisy = [simulate(plan, x_predict, noise_us=errors, noise_seed=1 + draw).predictions for draw in range(NOISE_DRAWS)]
    agreement = float(np.mean([np.mean(p == plain.predictions) for p in noisy]))
    stats = tuple(layer_stats(plan, run, li) for li in range(len(plan.layers)))
    margins = tuple(layer.window_us - float(np.nanmax(result.passed_us, initial=0.0))
                    for layer, result in zip(plan.layers, plain.layers))
    warnings = kernel_warnings(stats, tau, plan_loss(plan))
    late = max(abs(row.error_us_median) for row in stats) / tau
    tail = max(np.nan_to_num(row.kth_late_us_max, nan=0.0) / margin for row, margin in zip(stats, margins))
    if warnings:
        verdict = "; ".join(warnings[:-1])  # the last one is the advice to use a larger τ
    elif late > TRIAL_LATENESS_SHARE * LATE_FRACTION_OF_TAU:
        verdict = (f"neuron events came a median {late:.3f} τ late, more than {TRIAL_LATENESS_SHARE:g} of the "
                   f"{LATE_FRACTION_OF_TAU:g} τ a run may")
    elif tail > TAIL_SHARE:
        verdict = (f"a K-th spike came {tail:.2f} of the deadline margin late, more than the {TAIL_SHARE:g} a "
                   "trial may use")
    elif agreement < SAFE_AGREEMENT:
        verdict = f"predicted agreement {agreement:.2%} < {SAFE_AGREEMENT:.1%}"
    else:
        verdict = "safe"
    return TauTrial(tau, run.samples, plan.timing.period_us, tuple(_percentile(e, 50) for e in errors),
                    tuple(_percentile(np.abs(e), 99) for e in errors), tuple(row.error_us_median for row in stats),
                    tuple(row.kth_late_us_max for row in stats), margins,
                    sum(row.spikes_expected - row.spikes_received for row in stats), agreement, verdict)


def next_index(failed: TauTrial, i: int) -> int:
    """Where on the ladder to look after an unsafe τ (at index i): one step up, or, when the neuron
    events (their median, or the latest K-th spike) came late by far more than a trial may, straight to
    the τ at which that lateness in µs would be allowed (the allowance grows with τ, the lateness does
    not, so the walk down from there finds the smallest)."""
    late = max(abs(m) for m in failed.t_error_us_median) / (TRIAL_LATENESS_SHARE * LATE_FRACTION_OF_TAU * failed.tau_us)
    tail = max(np.nan_to_num(t, nan=0.0) / m for t, m in zip(failed.kth_late_us_max, failed.margin_us)) / TAIL_SHARE
    wanted = failed.tau_us * max(1.0, late, tail)
    above = [j for j, tau in enumerate(TAU_LADDER_US) if j > i and tau >= wanted]
    return above[0] if above else len(TAU_LADDER_US) - 1


def choose_tau(compile_at: Callable[[float], FabricPlan], measure: Callable[[FabricPlan], KernelRun],
               x_predict: np.ndarray, tried: Callable[[TauTrial], None] | None = None) -> TauChoice:
    """Search `TAU_LADDER_US` for the smallest safe τ. `compile_at(τ)` compiles the network at τ;
    `measure(plan)` builds that plan's fabric and streams `TRIAL_SAMPLES` training samples through
    it; `tried` hears each trial as it ends."""
    x_predict = x_predict[:PREDICT_SAMPLES]
    trials: dict[float, TauTrial] = {}

    def trial(tau_us: float) -> TauTrial:
        plan = compile_at(tau_us)
        result = judge(plan, measure(plan), x_predict)
        trials[tau_us] = result
        if tried is not None:
            tried(result)
        return result

    def give_up(why: str) -> KernelError:
        measured = "; ".join(f"{t / 1e3:g} ms: {trials[t].verdict}" for t in sorted(trials))
        return KernelError(f"--tau auto: {why} ({measured}); stop what else loads the CPUs, or give --tau "
                           "explicitly to run anyway")

    i = TAU_LADDER_US.index(START_TAU_US)
    trial(TAU_LADDER_US[i])
    while not trials[TAU_LADDER_US[i]].safe:
        if i + 1 == len(TAU_LADDER_US):
            raise give_up(f"no τ up to {TAU_LADDER_US[-1] / 1e3:g} ms keeps this network's decisions here")
        i = next_index(trials[TAU_LADDER_US[i]], i)
        try:
            trial(TAU_LADDER_US[i])
        except PlanError as exc:  # e.g. delays beyond what the profile holds: larger τ cannot help
            raise give_up(f"no τ this profile can realise keeps this network's decisions here; at "
                          f"{TAU_LADDER_US[i] / 1e3:g} ms: {exc}") from None
    lo = max((j for j in range(i) if TAU_LADDER_US[j] in trials), default=-1)  # all tried below i failed
    while i - lo > 1:
        mid = (lo + i) // 2
        if trial(TAU_LADDER_US[mid]).safe:
            i = mid
        else:
            lo = mid
    best = trials[TAU_LADDER_US[i]]
    smaller = trials.get(TAU_LADDER_US[i - 1]) if i > 0 else None
    why = (f"the smallest safe τ measured: predicted agreement {best.predicted_agreement:.2%}, |y| error p99 "
           f"{', '.join(f'{m:.0f}' for m in best.y_error_us_p99)} µs per layer")
    if smaller is not None:
        why += f"; at {smaller.tau_us / 1e3:g} ms: {smaller.verdict}"
    elif i == 0:
        why += " (the ladder's smallest)"
    return TauChoice(best.tau_us, why, tuple(trials[t] for t in sorted(trials)))

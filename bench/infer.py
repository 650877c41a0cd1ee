"""Inference on the kernel fabric, side by side in one run (needs root): issue 4's and 14's figures.

For each backend (netns, mininet) and each delay-line design (shared lines, a class per synapse)
the bundled network (or --net) classifies the whole test split through the `--profile` fabric,
designs alternating within a backend; reported per run: kernel / plan-simulation / golden
accuracy, per-sample kernel-vs-simulation agreement, arrival and fabric delay errors per layer,
samples/s, synaptic events/s, kernel CPU time per synaptic event (system + irq + softirq ticks of
the whole machine from /proc/stat between the first and the last sample's completion, divided by
the synapses of those samples, pruned ones included), and the gate
counters; `designs` lines the figures of the designs up per backend (samples/s, agreement, kernel
CPU per sample and per synaptic event, shaped packets per sample; with --repeat N, the medians of
N runs per design, the designs alternating, and every run's figure). The machine's kernel CPU
counts other processes' kernel work too: each run first measures that background (system + irq +
softirq per second, --background-s of idle fabric-free time) and reports its kernel CPU net of it
too (`kernel_cpu_ms_per_sample_net`, `kernel_cpu_us_per_synaptic_event_net`). Beside them, in the same run,
the machine's raw veth rate: spike frames (62 B, wire.SPIKE_FRAME_BYTES) sent back to back through
one veth pair, counted at the receiver.

    sudo python bench/infer.py [--net NET] [--dataset D] [--limit N] [--tau 5ms] [--prune 0.5|off] [--lead 1]
                               [--backends netns,mininet] [--designs shared,shared-clone,per-synapse]
                               [--repeat N] [--background-s 3] [-o out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from testbed.cli.params import DURATION_OR_AUTO, PRUNE_MARGIN, argparse_type
from testbed.infer.pipeline import BUNDLED_NETWORK, InferOptions, infer
from testbed.kernel import cleanup
from testbed.plan.compiler import DEFAULT_LEAD, DEFAULT_PRUNE_MARGIN
from testbed.plan.fabric_plan import DELAY_LINE_KINDS
from testbed.kernel.links import LinkBuilder
from testbed.kernel.names import RunRegistry
from testbed.plan.wire import SpikeHeader
from testbed.traffic.capture import Receiver
from testbed.traffic.inject import Injector, Schedule
from testbed.traffic.packets import spike_frame


def cpu_ticks() -> dict[str, int]:
    """Aggregate CPU time (USER_HZ ticks) by kind since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:8]
    return dict(zip(("user", "nice", "system", "idle", "iowait", "irq", "softirq"), map(int, fields)))


def raw_veth_rate(frames: int = 200_000) -> dict[str, float]:
    """Frames per second through one plain veth pair (no bridge, no qdisc), sender pinned to CPU 0."""
    registry = RunRegistry.create()
    try:
        with LinkBuilder(registry) as lb:
            a, b = lb.namespace("ra"), lb.namespace("rb")
            tx_if, rx_if = lb.veth("rt", "rr", a, b)
            lb.up(tx_if, a)
            lb.up(rx_if, b)
        frame = spike_frame("02:70:32:00:00:01", "ff:ff:ff:ff:ff:ff", "198.18.0.1", "198.18.0.255",
                            SpikeHeader(0, 0, 0, 0))
        with Injector.open(tx_if, a, tx_timestamps=False) as inj, Receiver.open(b, rx_if) as rx:
            time.sleep(0.2)
            rx.discard()
            schedule = Schedule(np.zeros(frames, dtype=np.int64), (frame,) * frames)
            began = time.perf_counter()
            inj.send(schedule, cpu=0)
            sent_s = time.perf_counter() - began
            got = rx.collect(time.monotonic_ns() + 2_000_000_000, expected_spikes=frames)
        received = len(got.arrivals)
        span_s = (got.arrivals["t_ns"].max() - got.arrivals["t_ns"].min()) / 1e9 if received > 1 else float("nan")
        return {"frames_sent": frames, "frames_received": received, "send_pps": frames / sent_s,
                "receive_pps": received / span_s if span_s == span_s and span_s > 0 else float("nan"),
                "receiver_drops": got.dropped}
    finally:
        cleanup.down(registry.run_id)


def backlog_drops() -> int:
    """Frames the kernel dropped because a CPU's receive backlog was full (net.core.netdev_max_backlog),
    summed over CPUs since boot: /proc/net/softnet_stat, second column (hex). Machine-wide."""
    return sum(int(line.split()[1], 16) for line in Path("/proc/net/softnet_stat").read_text().splitlines())


def kernel_ticks(ticks: dict[str, int]) -> int:
    return ticks["system"] + ticks["irq"] + ticks["softirq"]


def background_kernel_s_per_s(seconds: float) -> float:
    """Kernel CPU seconds per second the machine spends while this process does nothing (others' work)."""
    before = cpu_ticks()
    time.sleep(seconds)
    return (kernel_ticks(cpu_ticks()) - kernel_ticks(before)) / os.sysconf("SC_CLK_TCK") / seconds


def one_run(net: Path, backend: str, design: str, args: argparse.Namespace) -> dict:
    lines, _, banks = design.partition("/banks")
    options = InferOptions(dataset=args.dataset, limit=args.limit, backend=backend, profile=args.profile,
                           tau_us=args.tau, prune_margin=args.prune, lead=args.lead, delay_lines=lines,
                           banks=int(banks or 1))
    # CPU time between the first and the last sample's completion: the fabric streaming, without
    # compiling, building and tearing down (which a short run would otherwise charge to its samples).
    marks: list[tuple[int, dict[str, int], int]] = []
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if not marks or done[0] == report_samples:
            marks.append((done[0], cpu_ticks(), backlog_drops(), time.monotonic_ns()))

    report_samples = args.limit
    background = background_kernel_s_per_s(args.background_s) if args.background_s > 0 else 0.0
    began = time.perf_counter()
    if report_samples is None:  # the whole split: its size is known once the run starts
        def started(plan, samples):  # type: ignore[no-untyped-def]
            nonlocal report_samples
            report_samples = samples
    else:
        started = None
    report, run, _ = infer(net, options, progress, started)
    wall = time.perf_counter() - began
    (first, before, drops_before, _), (last, after, drops_after, _) = marks[0], marks[-1]
    streamed = last - first
    ticks = {k: after[k] - before[k] for k in before}
    hz = os.sysconf("SC_CLK_TCK")
    events = report.synaptic_events_per_s / report.samples_per_s * streamed
    kernel_s = kernel_ticks(ticks) / hz
    streaming_s = (marks[-1][3] - marks[0][3]) / 1e9
    net_s = kernel_s - background * streaming_s
    out = report.to_dict()
    out.update(command_wall_s=wall, cpu_seconds_streaming={k: v / hz for k, v in ticks.items()},
               samples_streamed_for_cpu=streamed, backlog_drops_streaming=drops_after - drops_before,
               kernel_cpu_us_per_synaptic_event=kernel_s / events * 1e6 if events else float("nan"),
               kernel_cpu_us_per_shaped_packet=kernel_s / (report.packets_per_sample["shaped"] * streamed) * 1e6,
               kernel_cpu_ms_per_sample=kernel_s / streamed * 1e3,
               background_kernel_cpu_s_per_s=background, streaming_s=streaming_s,
               kernel_cpu_ms_per_sample_net=net_s / streamed * 1e3,
               kernel_cpu_us_per_synaptic_event_net=net_s / events * 1e6 if events else float("nan"),
               load_after=os.getloadavg())
    return out


SIDE_BY_SIDE = ("samples_per_s", "kernel_sim_agreement", "kernel_accuracy", "sim_accuracy",
                "kernel_cpu_ms_per_sample", "kernel_cpu_us_per_synaptic_event", "kernel_cpu_us_per_shaped_packet",
                "kernel_cpu_ms_per_sample_net", "kernel_cpu_us_per_synaptic_event_net", "background_kernel_cpu_s_per_s",
                "backlog_drops_streaming")


def designs_side_by_side(runs: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Per backend, per design: the figures issue 14 compares (medians over the design's runs, and
    each run's value under `runs`), and the shaped packets per sample."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for name, run in runs.items():
        backend, design = name.split("#")[0].split("/", 1)
        grouped.setdefault((backend, design), []).append(run)
    out: dict[str, dict[str, dict]] = {}
    for (backend, design), group in grouped.items():
        last = group[-1]
        out.setdefault(backend, {})[design] = {
            **{key: float(np.median([run[key] for run in group])) for key in SIDE_BY_SIDE},
            "runs": {key: [run[key] for run in group] for key in SIDE_BY_SIDE},
            "shaped_packets_per_sample": last["packets_per_sample"]["shaped"],
            "port_copies_per_sample": last["packets_per_sample"]["port_copies"],
            "error_us_median": [layer["error_us_median"] for layer in last["layers"]],
            "error_us_p99": [layer["error_us_p99"] for layer in last["layers"]]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", type=Path, default=BUNDLED_NETWORK)
    parser.add_argument("--dataset", default=None, help="test data set (default: the network's)")
    parser.add_argument("--limit", type=int, default=None, help="test samples (default: the whole split)")
    parser.add_argument("--profile", default="shaper")
    parser.add_argument("--tau", type=argparse_type(DURATION_OR_AUTO), default=None,
                        help="e.g. 5ms, or auto (the default: measured, as pi2 infer does)")
    parser.add_argument("--lead", type=float, default=DEFAULT_LEAD, help="event leads (model units)")
    parser.add_argument("--prune", type=argparse_type(PRUNE_MARGIN),
                        default=DEFAULT_PRUNE_MARGIN, help="prune margin (model units) or 'off'")
    parser.add_argument("--backends", default="netns,mininet")
    parser.add_argument("--designs", default=",".join(DELAY_LINE_KINDS),
                        help="delay-line designs, run in this order; DESIGN/banksN: with N banks (e.g. shared/banks4)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per backend and design (designs alternate)")
    parser.add_argument("--background-s", type=float, default=3.0,
                        help="seconds of others' kernel CPU measured before each run (0: off)")
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    result = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                          "load_before": os.getloadavg()},
              "raw_veth": raw_veth_rate(),
              "runs": {f"{backend}/{design}" + (f"#{r}" if args.repeat > 1 else ""): one_run(args.net, backend, design, args)
                       for backend in args.backends.split(",") for r in range(args.repeat)
                       for design in args.designs.split(",")}}
    result["designs"] = designs_side_by_side(result["runs"])
    result["machine"]["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2, default=float)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

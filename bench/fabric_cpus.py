"""Does steering the fabric's packet work off the injector's CPU (RPS, `fabric_cpus`) help? (root)

One layer of 4 inputs × 16 neurons, K = 8 (every spike passes its gate): each sample injects 8
primer + spike pairs into in0 at once; the bridge floods them to 32 ports, each with its own htb
class per synapse (delays 0.3–5.7 ms, τ = 1 ms). Arrival error = kernel RX stamp − the spike's
kernel TX stamp − the plan's realised delay. A busy-wait loop (a child process we start and stop
by pid) spins on `--busy-cpu` the whole time, as a relay or injector would, and the injector is
pinned there too. Conditions alternate, in one run: fabric_cpus unset vs `--fabric-cpu`.

    sudo python bench/fabric_cpus.py [--samples 100] [--rounds 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from testbed.fabric.live import build_fabric
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.plan.profiles import load_profile
from testbed.plan.wire import KIND_PRIMER, KIND_SPIKE, SpikeHeader
from testbed.traffic.capture import Receiver
from testbed.traffic.inject import Injector, Schedule
from testbed.traffic.packets import spike_frame

PERIOD_NS = 9_000_000  # > longest delay (5.7 ms) + the class's token debt


def plan_for_bench():
    rng = np.random.default_rng(3)
    net = Pi2Network((DenseLayer(rng.uniform(-2.7, 2.7, (4, 16)), 8),), (4,))
    return compile_network(net, Realisation.from_profile(load_profile("shaper")), 1000.0, rng.random((4, 4)),
                           prune_margin=None, lead=0.0)


def run_condition(plan, fabric_cpus, samples: int, busy_cpu: int, sample0: int) -> dict[str, Any]:
    events = [(i, s) for i in range(4) for s in (0, 1)]
    with build_fabric(plan, fabric_cpus=fabric_cpus) as fab:
        delay_of = {}  # (ifindex, source, sign) -> realised delay ns
        for live, port in zip(fab.ports[0], plan.layers[0].ports):
            for syn in port.synapses:
                delay_of[(live.ifindex, syn.source, syn.sign)] = syn.delay_us * 1e3
        pairs = []
        for n in range(samples):
            for source, sign in events:
                for kind, size in ((KIND_PRIMER, plan.packets.primer_bytes), (KIND_SPIKE, plan.packets.spike_bytes)):
                    pairs.append((n * PERIOD_NS, spike_frame("02:00:00:00:00:01", "ff:ff:ff:ff:ff:ff", "10.0.0.1",
                                                             "10.0.0.255", SpikeHeader(0, source, sign, sample0 + n,
                                                                                       source * 2 + sign, kind), size)))
        schedule = Schedule.from_pairs(pairs)
        with Receiver.open(fab.host_netns) as rx, Injector.open(fab.inject_ifs[0], fab.host_netns) as inj:
            rx.discard()
            report = inj.send(schedule, cpu=busy_cpu)
            cap = rx.collect(time.monotonic_ns() + 2_000_000_000, expected_spikes=samples * len(events) * 32)
        got = cap.arrivals[cap.arrivals["kind"] == KIND_SPIKE]
        out: dict[str, Any] = {"fabric_cpus": fabric_cpus, "received": int(got.size),
                               "expected": samples * len(events) * 32, "rx_dropped": cap.dropped,
                               "tx_missing": report.tx_missing}
        # The class's clock starts when the primer leaves it, between the primer's and the spike's
        # TX stamps (frames of one event go back to back): error against each.
        for name, offset in (("error_vs_spike_tx_us", 1), ("error_vs_primer_tx_us", 0)):
            tx = {(sample0 + n, s, g): int(report.tx_real_ns[n * 16 + 2 * (2 * s + g) + offset])
                  for n in range(samples) for s, g in events}
            err = np.array([int(r["t_ns"]) - tx[(int(r["sample"]), int(r["source"]), int(r["sign"]))]
                            - delay_of[(int(r["ifindex"]), int(r["source"]), int(r["sign"]))] for r in got]) / 1e3
            out[name] = {"mean": float(err.mean()), "sd": float(err.std(ddof=1)), "median": float(np.median(err)),
                         "p99": float(np.percentile(err, 99)), "max": float(err.max())}
        lateness = report.lateness_ns / 1e3
        return {**out,
                "injector_lateness_us": {"median": float(np.median(lateness)), "p99": float(np.percentile(lateness, 99)),
                                         "max": float(lateness.max())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--busy-cpu", type=int, default=0)
    parser.add_argument("--fabric-cpu", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    plan = plan_for_bench()
    busy = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{args.busy_cpu}}})\nwhile True: pass"])
    result: dict[str, Any] = {"bench": "fabric_cpus", "kernel": platform.release(), "loadavg_before": os.getloadavg(),
                              "busy_cpu": args.busy_cpu, "samples": args.samples, "runs": []}
    try:
        for r in range(args.rounds):
            for cpus in (None, [args.fabric_cpu]):
                result["runs"].append(run_condition(plan, cpus, args.samples, args.busy_cpu, 1000 * (len(result["runs"]) + 1)))
    finally:
        busy.kill()
        busy.wait()
    result["loadavg_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

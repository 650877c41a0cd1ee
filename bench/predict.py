"""The fabric-CPU queue's predictions against the kernel, side by side in one run (needs root).

For each τ the bundled network (or --net) is compiled and classified on the kernel fabric
(bench/infer.py's `one_run`: kernel CPU per shaped packet, agreement, per-layer K-th spike
lateness), then the same plan is simulated with a fabric CPU of per-packet cost c
(testbed.sim.fabric_cpu) for each c of --costs and for the c the run measured (the whole machine's
kernel CPU per shaped packet: an upper bound, since part of it is the gate CPU's). Per τ: measured
agreement and K-th lateness p99 per layer beside the predicted ones, so one can see which c, if
any, predicts every τ.

    sudo python bench/predict.py [--net NET] [--taus 2.5ms,4ms,8ms] [--costs 1,2,4,8] [--limit N] [-o out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer import one_run  # noqa: E402  (bench/infer.py: one kernel run with its CPU figures)

from testbed.cli.compile import compile_for  # noqa: E402
from testbed.cli.params import DURATION  # noqa: E402
from testbed.infer.inputs import network_inputs  # noqa: E402
from testbed.infer.pipeline import BUNDLED_NETWORK  # noqa: E402
from testbed.model.netfile import load_network  # noqa: E402
from testbed.plan.compiler import DEFAULT_LEAD, DEFAULT_PRUNE_MARGIN, DEFAULT_RELAY_US  # noqa: E402
from testbed.plan.fabric_plan import DELAY_LINE_KINDS  # noqa: E402
from testbed.sim.executor import simulate  # noqa: E402
from testbed.sim.fabric_cpu import kth_lateness_p99, simulate_busy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", type=Path, default=BUNDLED_NETWORK)
    parser.add_argument("--taus", default="2.5ms,4ms,8ms")
    parser.add_argument("--costs", default="1,2,4,8", help="per-packet costs to predict with, µs")
    parser.add_argument("--limit", type=int, default=None, help="test samples (default: the whole split)")
    parser.add_argument("--design", default="shared", choices=DELAY_LINE_KINDS)
    parser.add_argument("-o", "--out", type=Path, default=Path("bench/results/predict.json"))
    args = parser.parse_args()
    run_args = argparse.Namespace(dataset=None, limit=args.limit, profile="shaper", prune=DEFAULT_PRUNE_MARGIN,
                                  lead=DEFAULT_LEAD, background_s=0.0)
    net = load_network(args.net)
    x = network_inputs(net, None, "test", args.limit).x
    rows, load_start = [], os.getloadavg()
    for tau in args.taus.split(","):
        run_args.tau = DURATION.convert(tau, None, None)
        measured = one_run(args.net, "netns", args.design, run_args)
        plan = compile_for(args.net, "shaper", run_args.tau, DEFAULT_RELAY_US, None, 500, DEFAULT_PRUNE_MARGIN,
                           0.0, DEFAULT_LEAD, args.design)
        closed = simulate(plan, x)
        costs = [float(c) for c in args.costs.split(",")] + [measured["kernel_cpu_us_per_shaped_packet"]]
        predicted = []
        for c in costs:
            busy = simulate_busy(plan, x, closed, c)
            predicted.append({"packet_us": c, "agreement": float(np.mean(busy.predictions == closed.predictions)),
                              "kth_late_us_p99": kth_lateness_p99(busy.layers, closed.layers)})
        row = {"tau_us": run_args.tau, "samples": measured["samples"],
               "measured": {"agreement": measured["kernel_sim_agreement"],
                            "kth_late_us_p99": [layer["kth_late_us_p99"] for layer in measured["layers"]],
                            "kernel_cpu_us_per_shaped_packet": measured["kernel_cpu_us_per_shaped_packet"],
                            "samples_per_s": measured["samples_per_s"], "load_after": measured["load_after"]},
               "predicted": predicted}
        print(json.dumps(row), flush=True)
        rows.append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"network": str(args.net), "design": args.design, "load_start": load_start,
                                        "runs": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The bundled digits network on 1, 2 and 3 emulated cluster hosts (needs root, Mininet, openssh-server).

Each configuration runs `pi2 infer`'s pipeline with `--cluster emulated:N` at one τ, side by side:

    1        everything on localhost (the cluster backend's own path, no tunnel), shared delay lines
    2        layer 0's lines on e1, layer 1's on localhost (the default placement): layer 0's events
             cross the tunnel relay → e1, its delayed copies e1 → relay
    3        layer 0's lines on e2, layer 1's on e1: both layers across tunnels
    3-split  a class per synapse, layer 0 split in two neuron groups on e1 and e2 (--split-ports):
             one layer split within, its second part fed through a trunk e1 → e2 (shared lines feed
             all of a layer's ports from one host, so a split layer has a class per synapse)

Per run: kernel, simulation (with the measured inter-host latencies folded in) and golden
accuracy, kernel–simulation agreement, samples/s, the placement and the measured latencies, the
per-layer arrival errors, and kernel CPU: the machine's system + irq + softirq time (/proc/stat,
every CPU) while samples streamed, per sample. Emulated hosts share this machine's one kernel, so
there is no per-host CPU counter; per host the bench reports that total split by the shaped
packets each host's parts carry (2 per shaped copy per sample: primer and spike), an
attribution, not a measurement. Other users of the machine add to the total: `uptime` is
recorded with each run.

    sudo python bench/cluster.py [--tau 20ms|auto] [--limit N] [--configs 1,2,3,3-split] [--split-ports 20] [-o bench/results/cluster.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from testbed.cli.params import DURATION
from testbed.cluster.hosts import parse_cluster
from testbed.fabric.live import ClusterRequest
from testbed.infer.pipeline import BUNDLED_NETWORK, InferOptions, infer
from testbed.plan.fabric_plan import FabricPlan

CONFIGS = ("1", "2", "3", "3-split")
KERNEL_FIELDS = (2, 5, 6)  # /proc/stat cpu line: system, irq, softirq (after the label)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def kernel_cpu_s() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(fields[i]) for i in KERNEL_FIELDS) / CLK_TCK


def host_shares(plan: FabricPlan, placement: dict) -> dict[str, float]:
    """Each host's share of the shaped packets per sample (its parts' lines, or its ports'
    synapses with a class per synapse: a primer and a spike each)."""
    packets: dict[str, int] = {}
    for part in placement["parts"]:
        layer = plan.layers[part["layer"]]
        start, stop = part["neurons"]
        n = 2 * (len([ln for ln in layer.lines if ln.classids]) if layer.lines else
                 sum(len(p.synapses) for p in layer.ports if start <= p.neuron < stop))
        packets[part["host"]] = packets.get(part["host"], 0) + n
    total = sum(packets.values())
    return {host: n / total for host, n in packets.items()}


def one_config(config: str, tau_us: float | None, limit: int | None, split_ports: int) -> dict:
    hosts, split = int(config.split("-")[0]), config.endswith("-split")
    request = ClusterRequest(parse_cluster(f"emulated:{hosts}"), max_ports=split_ports if split else None)
    options = InferOptions(backend="mininet", tau_us=tau_us, limit=limit, cluster=request,
                           delay_lines="per-synapse" if split else "shared")
    state: dict = {}

    def started(plan: FabricPlan, samples: int) -> None:
        state.update(plan=plan, samples=samples, seen=0)

    def progress(n: int) -> None:
        if state["seen"] == 0:
            state["cpu0"], state["t0"] = kernel_cpu_s(), time.perf_counter()
        state["seen"] += n
        if state["seen"] >= state["samples"]:
            state["cpu1"], state["t1"] = kernel_cpu_s(), time.perf_counter()

    load = os.getloadavg()
    began = time.perf_counter()
    report, _, _ = infer(BUNDLED_NETWORK, options, progress, started)
    r = report.to_dict()
    per_sample_ms = (state["cpu1"] - state["cpu0"]) * 1e3 / r["samples"]
    shares = host_shares(state["plan"], r["cluster"]["placement"])
    return {
        "config": config, "hosts": hosts, "delay_lines": options.delay_lines,
        "split_ports": split_ports if split else None, "tau_us": r["tau_us"], "tau_choice": r.get("tau_choice"),
        "samples": r["samples"],
        "kernel_accuracy": r["kernel_accuracy"], "sim_accuracy": r["sim_accuracy"],
        "golden_accuracy": r["golden_accuracy"], "kernel_sim_agreement": r["kernel_sim_agreement"],
        "accuracy_gap_pt": 100 * (r["kernel_accuracy"] - r["sim_accuracy"]),
        "samples_per_s": r["samples_per_s"], "inference_wall_s": r["wall_s"],
        "placement": r["cluster"]["placement"]["parts"], "latency": r["cluster"]["links"],
        "part_offsets_us": r["cluster"]["part_offsets_us"],
        "layers": [{k: layer[k] for k in ("layer", "spikes_expected", "spikes_received", "error_us_median",
                                          "error_us_p99")} for layer in r["layers"]],
        "warnings": r["warnings"],
        "kernel_cpu_ms_per_sample": per_sample_ms,
        "kernel_cpu_ms_per_sample_by_host": {h: per_sample_ms * s for h, s in shares.items()},
        "shaped_packet_share_by_host": shares,
        "loadavg_before": load, "loadavg_after": os.getloadavg(), "command_wall_s": time.perf_counter() - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tau", default="20ms",
                        help="τ for every configuration (default 20ms), or auto: each configuration measures its own "
                             "(pi2 infer's --tau auto, trials on the cluster fabric)")
    parser.add_argument("--limit", type=int, default=None, help="test samples (default: the whole split)")
    parser.add_argument("--configs", default="1,2,3,3-split", help="which configurations, in this order (above)")
    parser.add_argument("--split-ports", type=int, default=20,
                        help="with 3-split: split layers of more ports than this (the bundled network: layer 0, 32 ports)")
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/results/cluster.json"))
    args = parser.parse_args()
    tau_us = None if args.tau == "auto" else DURATION.convert(args.tau, None, None)
    runs = []
    for config in args.configs.split(","):
        if config not in CONFIGS:
            parser.error(f"--configs: {config!r} is not one of {', '.join(CONFIGS)}")
        run = one_config(config, tau_us, args.limit, args.split_ports)
        print(json.dumps({k: run[k] for k in ("config", "tau_us", "kernel_sim_agreement", "kernel_accuracy", "sim_accuracy",
                                              "samples_per_s", "kernel_cpu_ms_per_sample")}), flush=True)
        runs.append(run)
        args.output.parent.mkdir(parents=True, exist_ok=True)  # after each configuration: a later one may fail
        args.output.write_text(json.dumps({"network": str(BUNDLED_NETWORK), "tau_us": tau_us, "runs": runs},
                                          indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

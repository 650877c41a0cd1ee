"""LeNet-5 on the kernel fabric: what its plan needs, and what one machine runs out of (issue 14, item 4).

Compiles a π² LeNet5_K (conv1 6@5×5 → pool 2 → conv2 16@5×5 → pool 2 → dense 256-120-84-10, the
authors' per-layer s and rectified scores, n-bit delays) with shared delay lines, and reports per
layer what the plan needs: neurons, neuron ports, delay lines, shaped packets and fan-out copies per
sample, and the kernel map memory of its neurons, splitter and fan-out; and for the whole fabric
the veth pairs and the file descriptors a run holds. It simulates the first --limit test images
(plan simulator vs golden model, the agreement a kernel would be measured against), asks the
one-machine builder whether it would build the plan (testbed.fabric.live.fits_one_machine), and,
given a measured kernel run of a conv network that fits (bench/infer.py JSON, --measured),
extrapolates the kernel CPU per sample from that run's kernel CPU per handled packet (shaped +
fan-out copies). No root needed.

    python bench/conv_lenet.py --net LENET.npz [--limit 200] [--tau 6ms] [--prune off] [--measured infer.json ...] [-o out.json]

`--build NET` (root) builds NET's fabric once and reports what it held: kernel memory (MemAvailable,
Slab and Percpu of /proc/meminfo, before and while built: machine-wide, so other processes' churn
shows too), this process's open fds, the ports and the build time, per port. `--kernel NET` (root)
classifies NET's test split (--limit) on the kernel at --tau and reports kernel-vs-simulation
agreement by the simulated top-two margin (model units of the last layer's y), the simulation given
the inputs the relay actually injected into the last layer, so only that layer's timing counts there. `--make-small NET` writes instead the conv network that fits one machine, for bench/infer.py to run
on the kernel (`sudo python bench/infer.py --net NET --limit 360 --tau 6ms --backends netns`): LeNet
in small on 8×8 digits, conv 4@3×3 (s = 1, K 6 of 18) → 2×2 max-pooling → dense 36-10 (K 12), 4-bit
delays, seeded random weights (agreement is what it measures, not accuracy): 288 + 20 neuron ports.
Its decisions are near-ties (a quarter of the test gaps exceed 0.1 model units); `--wide` draws
the readout so that 94 % do.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from testbed.cli.params import DURATION, PRUNE_MARGIN, argparse_type
from testbed.errors import KernelError
from testbed.fabric.live import fits_one_machine
from testbed.infer.inputs import network_inputs
from testbed.model.netfile import load_network, save_network
from testbed.model.network import ConvLayer, DenseLayer, Pi2Network
from testbed.plan.compiler import DEFAULT_PRUNE_MARGIN, DEFAULT_RELAY_US, compile_network
from testbed.plan.fabric_plan import MAX_PORTS_PER_LAYER, FabricPlan, LayerPlan
from testbed.plan.select import realisation_for
from testbed.sim.executor import simulate

GATE_SLOTS = 16  # testbed.kernel.gate: a neuron's state ring (16-byte entries)
GATE_FDS = 3  # program, state map, counters, while the run reads the neuron's state (testbed.kernel.gate)


def small_conv_network(wide: bool = False) -> Pi2Network:
    """The `--make-small` network (module docstring); `wide`: its readout's weights drawn 4× wider
    (most clamp to ±c) and K 36 of 72, so its decisions are not near-ties (test gaps > 0.1 model
    units for 94 % of the digits test split, against 25 %)."""
    rng = np.random.default_rng(14)
    conv = ConvLayer(rng.normal(0, 1.5, (4, 1, 3, 3)), 6, (1, 8, 8), pool=2, s=1.0)
    dense = DenseLayer(rng.normal(0, 6.0 if wide else 1.5, (36, 10)), 36 if wide else 12)
    return Pi2Network((conv, dense), (1, 8, 8), bits=4, provenance={
        "dataset": {"name": "digits", "scale": 0.0625, "offset": 0.0},
        "command": f"python bench/conv_lenet.py --make-small NET{' --wide' if wide else ''} (seeded random weights)"})


def layer_needs(plan: FabricPlan, layer: LayerPlan) -> dict:
    """What one layer's shared-lines fabric holds and moves per sample."""
    primers = 2 if plan.packets.primer_bytes else 1
    lines_per_event: dict[tuple[int, int], int] = {}
    for line in layer.lines:
        lines_per_event[(line.source, line.sign)] = max(lines_per_event.get((line.source, line.sign), 0), line.line)
    widest_event = max(lines_per_event.values())
    widest_line = max(len(line.members) for line in layer.lines)
    events = 2 * layer.n_inputs
    maps = {"neuron_states": len(layer.ports) * GATE_SLOTS * 16,  # testbed.kernel.gate: one ring per port
            "splitter": events * (4 + 4 * widest_event),  # testbed.kernel.lines: count + a classid per line
            "fanout": events * widest_event * (4 + 8 * widest_line)}  # count + (ifindex, port) per member
    return {"layer": layer.index, "shape": list(layer.shape), "pool": layer.pool, "s": layer.s, "k": layer.k,
            "inputs": layer.n_inputs, "neurons": layer.n_neurons, "ports": len(layer.ports),
            "fits_one_machine": len(layer.ports) <= MAX_PORTS_PER_LAYER,
            "synapses": sum(len(p.synapses) for p in layer.ports), "lines": len(layer.lines),
            "lines_per_event_max": widest_event, "members_per_line_max": widest_line,
            "shaped_packets_per_sample": primers * sum(line.classid is not None for line in layer.lines),
            "fanout_copies_per_sample": sum(len(line.members) for line in layer.lines),
            "fanout_copies_per_sample_at_least": layer.k * len(layer.ports),  # the fan-out skips a neuron after K
            "per_synapse_flood_copies_per_sample": primers * events * len(layer.ports),
            "map_bytes": maps, "window_us": layer.window_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", type=Path)
    parser.add_argument("--make-small", type=Path, metavar="NET", help="write the small conv network and exit")
    parser.add_argument("--wide", action="store_true", help="--make-small: the readout with wide margins")
    parser.add_argument("--build", type=Path, metavar="NET", help="build NET's fabric once and report what it held")
    parser.add_argument("--kernel", type=Path, metavar="NET", help="run NET on the kernel: agreement by margin")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--calibration", type=int, default=100, help="training images that set the windows")
    parser.add_argument("--tau", type=argparse_type(DURATION), default=6000.0)
    parser.add_argument("--profile", default="shaper")
    parser.add_argument("--measured", type=Path, action="append", default=[],
                        help="bench/infer.py JSON of a conv network run on the kernel (repeatable)")
    parser.add_argument("-o", "--out", type=Path)
    parser.add_argument("--prune", type=argparse_type(PRUNE_MARGIN), default=DEFAULT_PRUNE_MARGIN,
                        help="prune margin (model units) or 'off'")
    args = parser.parse_args()
    if args.make_small is not None:
        print(save_network(small_conv_network(args.wide), args.make_small))
        return
    if args.build is not None or args.kernel is not None:
        result = (build_cost(args.build, args.tau, args.profile) if args.build is not None
                  else agreement_by_margin(args.kernel, args.tau, args.profile, args.limit))
        text = json.dumps(result, indent=2, default=float)
        if args.out:
            args.out.write_text(text)
        print(text)
        return
    if args.net is None:
        parser.error("--net LENET.npz (or --make-small NET) is required")
    load_before = os.getloadavg()
    net = load_network(args.net)
    x_cal = network_inputs(net, args.dataset, "train", args.calibration).x
    began = time.perf_counter()
    plan = compile_network(net, realisation_for(args.profile, None), args.tau, x_cal, args.net, relay_us=DEFAULT_RELAY_US,
                           prune_margin=args.prune)
    compile_s = time.perf_counter() - began
    plan_bytes = len(json.dumps(plan.to_dict(), separators=(",", ":")))
    layers = [layer_needs(plan, layer) for layer in plan.layers]
    ports = sum(row["ports"] for row in layers)
    try:
        fits_one_machine(plan)
        refusal = None
    except KernelError as exc:
        refusal = str(exc)
    test = network_inputs(net, args.dataset, "test", args.limit)
    began = time.perf_counter()
    sim = simulate(plan, test.x)
    sim_s = time.perf_counter() - began
    golden = net.with_bits(plan.network["bits"]).predict(test.x)
    scores = sim.scores
    result = {
        "benchmark": "conv_lenet", "network": str(args.net), "k": list(net.k), "bits": net.bits,
        "command": net.provenance.get("command"), "prune_margin": args.prune, "profile": plan.profile, "tau_us": plan.timing.tau_us,
        "period_us": plan.timing.period_us, "samples_per_s_bound": 1e6 / plan.timing.period_us,
        "compile_s": compile_s, "plan_json_bytes": plan_bytes, "layers": layers,
        "fabric": {"ports": ports, "veth_pairs": ports + len(plan.layers),
                   "fds_while_running": GATE_FDS * ports, "fd_limit": _fd_limit(),
                   "map_bytes": sum(sum(row["map_bytes"].values()) for row in layers),
                   "shaped_packets_per_sample": plan.packets_per_sample["shaped"],
                   "fanout_copies_per_sample": plan.packets_per_sample["port_copies"],
                   "one_machine_builder": refusal or "builds it"},
        "simulation": {"samples": len(test.y), "dataset": test.dataset, "seconds": sim_s,
                       "sim_accuracy": float(np.mean(sim.predictions == test.y)),
                       "golden_accuracy": float(np.mean(golden == test.y)),
                       "sim_golden_agreement": float(np.mean(sim.predictions == golden)),
                       "samples_all_scores_zero": int((scores.max(axis=1) == 0).sum()),
                       "samples_by_margin": margin_histogram(scores, plan.layers[-1].s),
                       "timed_out_spikes": int(sum(layer.timed_out.sum() for layer in sim.layers))},
        "load": {"before": load_before, "after": os.getloadavg()},
    }
    if args.measured:
        result["extrapolated"] = {str(path): extrapolate(json.loads(path.read_text()), result) for path in args.measured}
    text = json.dumps(result, indent=2, default=float)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


def extrapolate(measured: dict, lenet: dict) -> dict:
    """LeNet's kernel CPU per sample at the measured run's kernel CPU per handled packet (each shaped
    packet, primers included, and each fan-out copy): a linear estimate, not a measurement."""
    out = {}
    for name, run in measured["runs"].items():
        if run["delay_lines"] != "shared":
            continue
        handled = run["packets_per_sample"]["shaped"] + run["packets_per_sample"]["port_copies"]
        per_packet_us = run["kernel_cpu_ms_per_sample"] * 1e3 / handled
        lenet_handled = lenet["fabric"]["shaped_packets_per_sample"] + lenet["fabric"]["fanout_copies_per_sample"]
        cpu_ms = per_packet_us * lenet_handled / 1e3
        out[name] = {"measured_tau_us": run["tau_us"], "measured_kernel_cpu_us_per_handled_packet": per_packet_us,
                     "measured_load_after": run.get("load_after"),
                     "lenet_handled_packets_per_sample": lenet_handled,
                     "lenet_kernel_cpu_ms_per_sample": cpu_ms,
                     "lenet_samples_per_s_per_fabric_cpu": 1e3 / cpu_ms,
                     "lenet_kernel_cpu_ms_per_window": {str(row["layer"]): per_packet_us * (
                         row["shaped_packets_per_sample"] + row["fanout_copies_per_sample"]) / 1e3
                         for row in lenet["layers"]}}
    return out


def meminfo_kb() -> dict[str, int]:
    wanted = ("MemAvailable", "Slab", "Percpu")
    rows = (line.split() for line in Path("/proc/meminfo").read_text().splitlines())
    return {row[0].rstrip(":"): int(row[1]) for row in rows if row[0].rstrip(":") in wanted}


def build_cost(path: Path, tau_us: float, profile: str) -> dict:
    """Build `path`'s fabric once (the one-machine netns backend, CPUs placed as `pi2 infer` does)
    and measure what it holds while built (module docstring)."""
    from testbed.fabric.live import build_fabric
    from testbed.infer.pipeline import compile_for, cpu_placement

    plan = compile_for(path, profile, tau_us, DEFAULT_RELAY_US, None, 200)
    ports = sum(len(layer.ports) for layer in plan.layers)
    load_before, before, fds_before = os.getloadavg(), meminfo_kb(), len(os.listdir("/proc/self/fd"))
    began = time.perf_counter()
    with build_fabric(plan, "netns", **cpu_placement(0)):
        build_s = time.perf_counter() - began
        time.sleep(1.0)  # let deferred frees and RCU callbacks of the build settle before reading
        held, fds = meminfo_kb(), len(os.listdir("/proc/self/fd"))
    delta = {key: before[key] - held[key] if key == "MemAvailable" else held[key] - before[key] for key in before}
    return {"benchmark": "conv_lenet --build", "network": str(path), "ports": ports,
            "veth_pairs": ports + len(plan.layers), "lines": sum(len(layer.lines) for layer in plan.layers),
            "build_s": build_s, "build_ms_per_port": build_s / ports * 1e3,
            "kernel_kb": delta, "kernel_kb_per_port": {key: value / ports for key, value in delta.items()},
            "fds_held": fds - fds_before, "fds_per_port": (fds - fds_before) / ports,
            "load": {"before": load_before, "after": os.getloadavg()}}


MARGIN_BINS = (0.0, 0.05, 0.1, 0.2, 0.5, np.inf)  # model units of the last layer's y


def margins(scores: np.ndarray, s: float) -> np.ndarray:
    """Each sample's top-two score gap in model units of y (scores are s·y, rectified or not)."""
    top2 = np.sort(scores, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) / s


def margin_histogram(scores: np.ndarray, s: float) -> list[dict]:
    gap = margins(scores, s)
    return [{"margin_units": [lo, hi], "samples": int(((gap >= lo) & (gap < hi)).sum())}
            for lo, hi in zip(MARGIN_BINS[:-1], MARGIN_BINS[1:])]


def agreement_by_margin(path: Path, tau_us: float, profile: str, limit: int) -> dict:
    """Kernel vs simulation on `path`'s first `limit` test samples, overall and by margin (module docstring)."""
    from testbed.fabric.live import build_fabric
    from testbed.infer.pipeline import compile_for, cpu_placement
    from testbed.infer.session import run_inference
    from testbed.sim.executor import simulate_layer

    plan = compile_for(path, profile, tau_us, DEFAULT_RELAY_US, None, 200)
    test = network_inputs(load_network(path), None, "test", limit)
    x = test.x.reshape(len(test.x), -1)
    load_before = os.getloadavg()
    with build_fabric(plan, "netns", **cpu_placement(0)) as fabric:
        run = run_inference(plan, fabric, x, inject_cpu=0)
    kernel = plan.scores(run.y[-1]).argmax(axis=1)
    whole = simulate(plan, x).predictions
    last = plan.scores(simulate_layer(plan, plan.layers[-1], run.inputs[-1]).y)
    margin = margins(last, plan.layers[-1].s)
    by_margin = []
    for lo, hi in zip(MARGIN_BINS[:-1], MARGIN_BINS[1:]):
        inside = (margin >= lo) & (margin < hi)
        by_margin.append({"margin_units": [lo, hi], "samples": int(inside.sum()),
                          "agreement": float(np.mean(kernel[inside] == last.argmax(axis=1)[inside])) if inside.any() else None})
    lateness = np.concatenate([np.asarray(v) for v in run.lateness_us])
    return {"benchmark": "conv_lenet --kernel", "network": str(path), "tau_us": tau_us, "samples": len(x),
            "kernel_sim_agreement": float(np.mean(kernel == whole)),
            "last_layer_agreement": float(np.mean(kernel == last.argmax(axis=1))), "by_margin": by_margin,
            "inject_late_us_p50_p99": np.percentile(lateness, [50, 99]).tolist(), "late_slots": run.late_slots,
            "samples_per_s": len(x) / run.wall_s, "load": {"before": load_before, "after": os.getloadavg()}}


def _fd_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


if __name__ == "__main__":
    main()

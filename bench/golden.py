"""The MNIST test set through a 784-500-10 π² network: the compiled path against a plain numpy one.

Both compute the same forward pass (pi2-model.md, steps 1–5) on the 10 000 test images:

- fast:     `Pi2Network.predict`, i.e. `dense_times` with the numba kernels of
            testbed/model/fast_kernel.py (no arrival tensor; numba threads over samples). It also
            computes each layer's causal offsets, which the baseline skips.
- baseline: the straightforward numpy way: build the (batch, 2n, m) arrival tensors and take the
            mean of the K earliest with np.partition (single-threaded numpy), at the best batch
            size of a sweep.

Each measurement runs in a fresh subprocess (`--worker`), so its peak memory is that process's
peak resident set (VmHWM from /proc/self/status, which includes the interpreter, numpy/numba and
the loaded data set). The two must predict identically on every sample. Timings are medians:
the fast path over `--reps` full passes; the baseline (≈40 samples/s, so one pass takes minutes)
over the equal segments of one full pass. JIT warm-up is measured apart: the first call with an
empty numba cache (compilation) and then with that cache filled (what later runs pay).

Without `--net` the network has random weights, N(0, 1/√fan_in)·3 clipped to [−c, c] (seeded),
scaled like a trained MLP's; the JSON says so. Accuracy is then chance, which does not matter here.

    python bench/golden.py [--net FILE] [--samples 10000] [--reps 3] [-o results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from testbed.errors import ModelError
from testbed.model.encoding import Constants, delays, encode
from testbed.model.layers import arrivals, mean_k_earliest
from testbed.model.netfile import load_network
from testbed.model.network import DenseLayer, Pi2Network
from testbed.train.datasets import load_dataset, normalisation_of

RANDOM_SEED = 0
RANDOM_TOPOLOGY = (784, 500, 10)
RANDOM_K = (1, 30)
TARGET_RATIO = 3.0
TARGET_PEAK_BYTES = 2**30


def random_network(seed: int = RANDOM_SEED) -> Pi2Network:
    """784-500-10, K = [1, 30], weights N(0, 1/√fan_in)·3 clipped to [−c, c]."""
    rng = np.random.default_rng(seed)
    c = Constants()
    layers = tuple(DenseLayer(np.clip(rng.normal(0.0, 3.0 / np.sqrt(n), (n, m)), -c.c, c.c), k)
                   for n, m, k in zip(RANDOM_TOPOLOGY[:-1], RANDOM_TOPOLOGY[1:], RANDOM_K))
    return Pi2Network(layers, (784,), c, provenance={"random_weights": {"seed": seed, "std": "3/sqrt(fan_in)"}})


def network_and_data(net_file: str | None, samples: int) -> tuple[Pi2Network, np.ndarray, np.ndarray]:
    net = random_network() if net_file is None else load_network(net_file)
    if net.gamma is not None or not all(isinstance(layer, DenseLayer) for layer in net.layers):
        raise ModelError(f"{net_file}: this bench runs dense π²_K networks only (no conv, no TEMP)")
    mnist = load_dataset("mnist")
    x, y = mnist.split("test")
    x = normalisation_of(net.provenance, mnist).apply(x[:samples])
    return net, x.reshape((len(x), *net.input_shape)), y[:samples]


def baseline_predict(net: Pi2Network, x: np.ndarray) -> np.ndarray:
    """Class predictions via the full arrival tensors and np.partition (no packet loss, so no timeouts)."""
    c = net.constants
    h = x.reshape(len(x), -1)
    for i, layer in enumerate(net.layers):
        t_plus, t_minus = encode(h, c.t0)
        z_plus, z_minus = arrivals(t_plus, t_minus, *delays(layer.weight, c.c, net.bits))
        y = mean_k_earliest(z_plus, layer.k) - mean_k_earliest(z_minus, layer.k)
        h = np.maximum(-c.s * y, 0.0) if i < len(net.layers) - 1 else -c.s * y
    return h.argmax(axis=1)


def batched(predict, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([predict(x[lo:lo + batch]) for lo in range(0, len(x), batch)])


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def worker(job: dict) -> dict:
    """One measurement in this (fresh) process; predictions go to job["out"] as .npy."""
    net, x, _ = network_and_data(job["net"], job["samples"])
    result: dict = {"rss_after_setup_bytes": current_rss_bytes(), "load_before": os.getloadavg()}
    if job["kind"] == "sweep":
        rates = {}
        for batch in job["batches"]:
            part = x[:max(job["sweep_samples"], batch)]
            start = time.perf_counter()
            batched(lambda b: baseline_predict(net, b), part, batch)
            rates[str(batch)] = len(part) / (time.perf_counter() - start)
        result["samples_per_s_by_batch"] = rates
    elif job["kind"] == "baseline":
        bounds = np.linspace(0, len(x), job["segments"] + 1).astype(int)
        rates, preds = [], []
        start_all = time.perf_counter()
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            start = time.perf_counter()
            preds.append(batched(lambda b: baseline_predict(net, b), x[lo:hi], job["batch"]))
            rates.append((hi - lo) / (time.perf_counter() - start))
        result["full_pass_samples_per_s"] = len(x) / (time.perf_counter() - start_all)
        result["segment_samples_per_s"] = rates
        result["samples_per_s"] = statistics.median(rates)
        np.save(job["out"], np.concatenate(preds))
    else:  # fast
        import numba

        start = time.perf_counter()
        net.predict(x[:2])
        result["first_call_s"] = time.perf_counter() - start
        times, preds = [], None
        for _ in range(job["reps"]):
            start = time.perf_counter()
            preds = batched(net.predict, x, job["batch"])
            times.append(time.perf_counter() - start)
        result["pass_s"] = times
        result["samples_per_s"] = len(x) / statistics.median(times)
        result["numba_threads"] = numba.get_num_threads()
        result["numba_threading_layer"] = numba.threading_layer()
        np.save(job["out"], preds)
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["load_after"] = os.getloadavg()
    return result


def run_worker(job: dict, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"worker {job['kind']} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def machine() -> dict:
    import numba

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "kernel": platform.release()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", help="a π² network file (.npz); default: random 784-500-10 weights, K = [1, 30]")
    parser.add_argument("--samples", type=int, default=10_000, help="test images to run (default all 10000)")
    parser.add_argument("--reps", type=int, default=3, help="full passes of the fast path, median reported (default 3)")
    parser.add_argument("--fast-batch", type=int, default=1000, help="samples per predict call of the fast path (default 1000)")
    parser.add_argument("--baseline-batches", default="1,8,32,128", help="baseline batch sizes to sweep (default 1,8,32,128)")
    parser.add_argument("--sweep-samples", type=int, default=256, help="samples per swept baseline batch size (default 256)")
    parser.add_argument("--segments", type=int, default=5, help="timed segments of the baseline's full pass (default 5)")
    parser.add_argument("-o", "--out", help="write the JSON here instead of stdout")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    common = {"net": args.net, "samples": args.samples}
    with tempfile.TemporaryDirectory(prefix="p2bench") as tmp:
        cache = {"NUMBA_CACHE_DIR": str(Path(tmp) / "numba")}  # empty: the first worker compiles
        cold = run_worker({**common, "kind": "fast", "reps": 1, "batch": args.fast_batch,
                           "out": str(Path(tmp) / "cold.npy")}, cache)
        fast = run_worker({**common, "kind": "fast", "reps": args.reps, "batch": args.fast_batch,
                           "out": str(Path(tmp) / "fast.npy")}, cache)
        one_thread = run_worker({**common, "kind": "fast", "reps": args.reps, "batch": args.fast_batch,
                                 "out": str(Path(tmp) / "fast1.npy")}, {**cache, "NUMBA_NUM_THREADS": "1"})
        sweep = run_worker({**common, "kind": "sweep", "batches": [int(b) for b in args.baseline_batches.split(",")],
                            "sweep_samples": args.sweep_samples})
        best = int(max(sweep["samples_per_s_by_batch"], key=sweep["samples_per_s_by_batch"].get))
        base = run_worker({**common, "kind": "baseline", "batch": best, "segments": args.segments,
                           "out": str(Path(tmp) / "base.npy")})
        preds = {name: np.load(Path(tmp) / f"{name}.npy") for name in ("fast", "fast1", "cold", "base")}
    net, _, labels = network_and_data(args.net, args.samples)
    mismatches = int(np.count_nonzero(preds["fast"] != preds["base"]))
    ratio = fast["samples_per_s"] / base["samples_per_s"]
    result = {
        "bench": "golden",
        "network": {"file": args.net, "random_weights": args.net is None, "seed": RANDOM_SEED if args.net is None else None,
                    "topology": [net.layers[0].n_inputs] + [layer.n_neurons for layer in net.layers],
                    "k": list(net.k), "bits": net.bits},
        "data": {"dataset": "mnist", "split": "test", "samples": int(len(labels))},
        "machine": machine(),
        "memory_method": "peak resident set (VmHWM) of a fresh subprocess per measurement; includes interpreter, "
                         "libraries and the loaded data set (see rss_after_setup_bytes)",
        "fast": {**fast, "batch": args.fast_batch, "reps": args.reps},
        "fast_one_thread": {**one_thread, "batch": args.fast_batch, "reps": args.reps},
        "jit": {"compile_first_call_s": cold["first_call_s"], "cached_first_call_s": fast["first_call_s"]},
        "baseline": {**base, "batch": best, "method": "median of the segments of one full pass",
                     "sweep": sweep["samples_per_s_by_batch"], "sweep_samples": args.sweep_samples},
        "ratio": ratio,
        "ratio_one_thread": one_thread["samples_per_s"] / base["samples_per_s"],
        "predictions": {"identical": mismatches == 0, "mismatches": mismatches,
                        "identical_one_thread_and_cold": bool(np.array_equal(preds["fast1"], preds["base"])
                                                              and np.array_equal(preds["cold"], preds["base"])),
                        "accuracy_fast": float(np.mean(preds["fast"] == labels)),
                        "accuracy_baseline": float(np.mean(preds["base"] == labels))},
        "target": {"ratio_min": TARGET_RATIO, "peak_rss_max_bytes": TARGET_PEAK_BYTES,
                   "met": bool(ratio >= TARGET_RATIO and fast["peak_rss_bytes"] < TARGET_PEAK_BYTES and mismatches == 0)},
    }
    text = json.dumps(result, indent=2)
    if args.out is None:
        print(text)
    else:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""`pi2 infer --tau auto` back to back, on an idle machine and with one CPU kept busy (needs root).

The README's main command (`pi2 infer`: the bundled network, the whole digits test split, τ measured)
runs `--runs` times as it is, then `--runs` times while a Python busy loop pinned to the fabric's CPU
(every CPU but the injector's, 0) competes with the kernel's packet work. Per run: the τ it chose,
kernel–simulation agreement, accuracies, samples/s, warnings and the time spent choosing τ; per
condition: medians, and the ratio of samples/s busy to idle.

    sudo python bench/autotau.py [--runs 5] [--limit N] [--backend netns] [-o bench/results/autotau.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUSY_LOOP = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"


def one_run(limit: int | None, backend: str) -> dict[str, object]:
    argv = [sys.executable, "-c", "from testbed.cli import main; main()", "infer", "--backend", backend, "--json"]
    if limit:
        argv += ["--limit", str(limit)]
    began = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        return {"exit": done.returncode, "error": done.stderr.strip().splitlines()[-1:], "command_wall_s": wall}
    report = json.loads(done.stdout)
    choice = report["tau_choice"]
    return {"exit": 0, "tau_us": report["tau_us"], "agreement": report["kernel_sim_agreement"],
            "kernel_accuracy": report["kernel_accuracy"], "sim_accuracy": report["sim_accuracy"],
            "samples_per_s": report["samples_per_s"], "warnings": report["warnings"], "command_wall_s": wall,
            "inference_wall_s": report["wall_s"], "trials": [(t["tau_us"], t["verdict"]) for t in choice["trials"]],
            "ports_short": [row["ports_short"] for row in report["layers"]],
            "kth_late_us_max": [row["kth_late_us_max"] for row in report["layers"]],
            "reason": choice["reason"]}


def condition(runs: int, limit: int | None, backend: str) -> dict[str, object]:
    results = [one_run(limit, backend) for _ in range(runs)]
    ok = [r for r in results if r["exit"] == 0]
    summary = {"runs": results, "failed": len(results) - len(ok)}
    if ok:
        summary.update({f"median_{key}": statistics.median(r[key] for r in ok)
                        for key in ("tau_us", "agreement", "samples_per_s", "command_wall_s")})
        summary["min_agreement"] = min(r["agreement"] for r in ok)
        summary["runs_with_warnings"] = sum(bool(r["warnings"]) for r in ok)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="test samples (default: the whole split)")
    parser.add_argument("--backend", default="netns")
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/autotau.py builds kernel fabrics: run it as root")
    fabric_cpu = max(os.sched_getaffinity(0) - {0})
    result = {"machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()},
              "idle": condition(args.runs, args.limit, args.backend)}
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(fabric_cpu)])
    try:
        result["busy"] = {"busy_cpu": fabric_cpu, **condition(args.runs, args.limit, args.backend)}
    finally:
        busy.kill()
        busy.wait()
    if "median_samples_per_s" in result["idle"] and "median_samples_per_s" in result["busy"]:
        result["busy_over_idle_samples_per_s"] = result["busy"]["median_samples_per_s"] / result["idle"]["median_samples_per_s"]
    result["machine"]["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

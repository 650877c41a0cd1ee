"""Training step time of π² students: the compiled K-earliest op against the torch topk formulation.

The op (testbed.train.k_earliest) replaced one built from torch ops: build every arrival
z = t + d without autograd, `torch.topk` its K earliest, gather those and recompute them with
autograd so the backward reaches only them (`topk_earliest_mean` below, as pi2_torch had it).
This bench times one forward + backward of a whole student per mini-batch with each, batch by
batch alternately on the same batches, and reports per-batch medians and their ratio:

- lenet5k: the authors' LeNet5_K on Fashion-MNIST, K 12,50,85,25,75, batch 32 (`pi2 train --arch lenet5k`);
- mlp: MNIST 784-50-10, K 140,16, batch 128 (the bundled mnist-mlp.npz's recipe).

Students hold a freshly initialised teacher's weights (seed 0) and see real training images.
Both formulations' scores are checked equal on every batch (float32: within 1e-4, their summation
orders differ; the largest difference is reported).

    python bench/k_earliest.py [--batches 12] [-o bench/results/k_earliest.json]

Run it with one thread (OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1) like training; the JSON records
the load average, since the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import testbed.train.pi2_torch as pi2_torch
from testbed.train.arch import parse_arch, parse_k
from testbed.train.datasets import load_dataset
from testbed.train.k_earliest import k_earliest_mean
from testbed.train.teacher import build_teacher, student_template

CASES = {"lenet5k": ("fashion", "lenet5k", "12,50,85,25,75", True, 32),
         "mlp": ("mnist", "mlp:784-50-10", "140,16", False, 128)}


def _masked_mean(earliest: torch.Tensor, timeout: float) -> torch.Tensor:
    finite = torch.isfinite(earliest)
    count = finite.sum(dim=-1)
    total = torch.where(finite, earliest, torch.zeros_like(earliest)).sum(dim=-1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, timeout))


def topk_earliest_mean(t_all: torch.Tensor, d_all: torch.Tensor, k: int, timeout: float) -> torch.Tensor:
    """The former formulation: topk on the arrival tensor, then autograd through the gathered K."""
    batch, arrivals = t_all.shape
    m = d_all.shape[1]
    if k >= arrivals:
        return _masked_mean(t_all[:, None, :] + d_all.T[None], timeout)
    with torch.no_grad():
        z = t_all[:, None, :] + d_all.T[None]
        chosen = torch.topk(z, k, dim=2, largest=False, sorted=False).indices
        del z
    times = torch.gather(t_all, 1, chosen.reshape(batch, m * k)).reshape(batch, m, k)
    chosen_delays = d_all.T[torch.arange(m, device=chosen.device)[None, :, None], chosen]
    return _masked_mean(times + chosen_delays, timeout)


def step(student: pi2_torch.Pi2TorchNetwork, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds of one forward + backward (wall clock), and the scores."""
    student.zero_grad()
    started = time.perf_counter()
    scores = student(x)
    scores.square().sum().backward()
    return time.perf_counter() - started, scores.detach()


def run_case(name: str, batches: int) -> dict[str, object]:
    dataset_name, arch_text, k_text, authors, batch_size = CASES[name]
    dataset = load_dataset(dataset_name)
    arch = parse_arch(arch_text)
    torch.manual_seed(0)
    student = pi2_torch.Pi2TorchNetwork(student_template(build_teacher(arch), arch, parse_k(k_text, arch), authors))
    x = torch.as_tensor(dataset.normalisation.apply(dataset.x_train[:batch_size * (batches + 1)]),
                        dtype=torch.float32).reshape(-1, *arch.input_shape)
    seconds: dict[str, list[float]] = {"topk": [], "op": []}
    largest = 0.0
    for b, batch in enumerate(x.split(batch_size)):
        results = {}
        for formulation, op in (("topk", topk_earliest_mean), ("op", k_earliest_mean)):
            pi2_torch.k_earliest_mean = op
            results[formulation] = step(student, batch)
            if b > 0:  # the first batch compiles and warms caches
                seconds[formulation].append(results[formulation][0])
        difference = float((results["op"][1] - results["topk"][1]).abs().max())
        if not difference <= 1e-4:
            raise AssertionError(f"{name}: the two formulations' scores differ by {difference}")
        largest = max(largest, difference)
    pi2_torch.k_earliest_mean = k_earliest_mean
    medians = {key: statistics.median(values) for key, values in seconds.items()}
    return {"dataset": dataset_name, "arch": arch_text, "k": k_text, "batch_size": batch_size, "batches": batches,
            "median_s_per_batch": medians, "largest_score_difference": largest, "speedup": medians["topk"] / medians["op"],
            "epoch_estimate_s": {key: value * len(dataset.x_train) / batch_size for key, value in medians.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    cases = {name: run_case(name, args.batches) for name in CASES}
    result = {"benchmark": "k_earliest", "cases": cases, "torch_threads": 1,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()

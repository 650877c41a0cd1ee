"""End to end on the real kernel: a tiny π² network classifies a few samples in a live fabric.

The kernel's decisions must equal the plan simulator's wherever the simulated top-two margin
is clear of timing noise; every port's neuron must count its K spikes and pass one event; the
pcaps must be readable by tcpdump and `pi2 trace`. Profile: $PI2_PROFILE (the netem guest sets it), else shaper.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from testbed.cli import pi2
from testbed.fabric.live import build_fabric
from testbed.infer.pipeline import InferOptions, cpu_placement, write_outputs
from testbed.infer.session import run_inference
from testbed.kernel import netns
from testbed.model.network import ConvLayer, DenseLayer, Pi2Network
from testbed.plan.compiler import DEFAULT_LEAD, Realisation, compile_network
from testbed.plan.profiles import load_profile
from testbed.sim.executor import simulate_layer

pytestmark = pytest.mark.root

PROFILE = os.environ.get("PI2_PROFILE", "shaper")
# The guest's 100 Hz timers need long time units; the host's are exact to tens of µs.
TAU_US = 20_000.0 if os.environ.get("PI2_IN_GUEST") == "1" else 4_000.0


@pytest.fixture(scope="module", params=[1, 4], ids=["one-bank", "four-banks"])
def tiny(request):
    """The network, its plan and 8 samples; with four banks the samples overlap in every layer."""
    rng = np.random.default_rng(3)
    net = Pi2Network((DenseLayer(rng.normal(0, 1.2, size=(6, 4)), 1), DenseLayer(rng.normal(0, 1.2, size=(4, 3)), 2)),
                     (6,), bits=4)
    x = rng.uniform(0, 1.5, size=(40, 6))
    plan = compile_network(net, Realisation.from_profile(load_profile(PROFILE)), TAU_US, x, prune_margin=None,
                           lead=DEFAULT_LEAD, banks=request.param)
    if request.param > 1:
        assert plan.timing.layer_slots > 1  # more than one sample per layer in flight
    return net, plan, x[:8]


def test_kernel_decisions_equal_the_simulation(tiny, tmp_path):
    net, plan, x = tiny
    with build_fabric(plan, "netns", **cpu_placement(0)) as fabric:
        run = run_inference(plan, fabric, x, inject_cpu=0, keep_frames=True)
        counters = fabric.gate_counters()
        host = fabric.host_netns
    assert host not in netns.list_names()  # torn down
    # The last layer's decisions given the inputs the relay injected into it, so only that layer's
    # timing counts (an upstream error, amplified by s, would otherwise move the margins): where the
    # plan's top two scores are > 0.2 model time units (800 µs at this τ) apart, only a broken fabric
    # decides otherwise.
    s = plan.constants["s"]
    last = simulate_layer(plan, plan.layers[-1], run.inputs[-1])
    kernel, scores = (-s * run.y[-1]).argmax(axis=1), -s * last.y
    top2 = np.sort(scores, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2.0  # score units: −s·y
    assert clear.sum() >= 3, "the fixture should give some clear decisions"
    assert (kernel == scores.argmax(axis=1))[clear].all(), (kernel, scores.argmax(axis=1), top2)
    # Every port's neuron counted exactly K spikes per sample and passed one event for them, and
    # the gates dropped every primer (shared lines: primers end at the fan-out, none reaches a gate).
    for li, layer in enumerate(plan.layers):
        assert (run.counts[li] == layer.k).all()
        assert sum(c["spikes_counted"] for c in counters[li]) == len(x) * len(layer.ports) * layer.k
        assert sum(c["events_passed"] for c in counters[li]) == len(x) * len(layer.ports)
        if plan.packets.primer_bytes:
            primers = len(x) * 2 * layer.n_inputs * len(layer.ports) if plan.delay_lines == "per-synapse" else 0
            assert sum(c["primers_dropped"] for c in counters[li]) == primers

    files = write_outputs(plan, run, InferOptions(pcap_dir=tmp_path, plots_dir=tmp_path))
    names = {f.name for f in files}
    assert {"received.pcap", "injected.pcap", "raster-sample0.png", "arrival-error.png"} <= names
    traced = CliRunner().invoke(pi2, ["trace", str(tmp_path / "received.pcap"), "--json"])
    assert traced.exit_code == 0, traced.output
    assert len(json.loads(traced.output)) == sum(c["events_passed"] for layer in counters for c in layer)
    if shutil.which("tcpdump"):
        out = subprocess.run(["tcpdump", "-nr", str(tmp_path / "injected.pcap")], capture_output=True, text=True)
        assert out.returncode == 0 and "UDP" in out.stdout and ".5402" in out.stdout


def test_a_conv_layer_computes_on_real_packets():
    # conv 2@2×2 over 1×5×5 (s = 1) → 2×2 max-pooling by the relay → dense 8-3: 64 + 6 neuron ports.
    rng = np.random.default_rng(11)
    net = Pi2Network((ConvLayer(rng.normal(0, 1.5, (2, 1, 2, 2)), 3, (1, 5, 5), pool=2, s=1.0),
                      DenseLayer(rng.normal(0, 1.5, (8, 3)), 4)), (1, 5, 5), bits=4)
    x = rng.uniform(0, 1.5, size=(40, 25))
    # 5 τ: 132 events fan out to 64 ports here, and on a loaded machine the injector alone is up to
    # ≈7 ms late (p99); at this τ that is a third of a model unit.
    plan = compile_network(net, Realisation.from_profile(load_profile(PROFILE)), 5 * TAU_US, x, prune_margin=None,
                           lead=DEFAULT_LEAD)
    with build_fabric(plan, "netns", **cpu_placement(0)) as fabric:
        run = run_inference(plan, fabric, x[:6], inject_cpu=0)
    conv = simulate_layer(plan, plan.layers[0], x[:6])
    # Each conv neuron's y where the plan puts it > 0.5 model units from 0 (92 of its 192 here): a
    # port fed outside its receptive field, or at another channel's delays, would flip signs.
    clear = np.abs(conv.y) > 0.5
    assert clear.sum() >= 50 and (np.sign(run.y[0]) == np.sign(conv.y))[clear].all()
    assert (run.counts[0] == plan.layers[0].k).all()
    # The relay fed the dense layer the pooled ReLU(−y) of what the kernel computed.
    np.testing.assert_array_equal(run.inputs[1], plan.layers[0].relay(run.y[0]))

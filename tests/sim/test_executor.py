import numpy as np
import pytest

from testbed.model.network import ConvLayer, DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.sim.executor import simulate

IDEAL = Realisation("netem", "netem", min_delay_us=0.0, flood_copy_us=0.0, max_delay_us=1e9)


def random_net(rng, k=(3, 2), bits=None):
    return Pi2Network((DenseLayer(rng.normal(size=(12, 6)), k[0]), DenseLayer(rng.normal(size=(6, 4)), k[1])),
                      (12,), bits=bits)


@pytest.mark.parametrize("k", [(1, 1), (3, 2), (20, 10)])
def test_simulation_equals_golden_model_without_quantisation(k):
    rng = np.random.default_rng(0)
    net = random_net(rng, k)
    x = rng.random((64, 12)) * 2
    # τ = 1 s makes netem's whole-µs rounding negligible (1e-6 model units).
    plan = compile_network(net, IDEAL, 1e6, x, margin=1.0, prune_margin=None, lead=0.0)
    result = simulate(plan, x)
    np.testing.assert_allclose(result.scores, net.scores(x), atol=1e-3)
    top2 = np.sort(net.scores(x), axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-2  # exact ties may break either way
    assert clear.mean() > 0.5
    assert (result.predictions == net.predict(x))[clear].all()


def test_deadline_times_out_late_spikes():
    rng = np.random.default_rng(1)
    net = random_net(rng, (24, 1))  # K = 2n: every arrival counts
    x = rng.random((16, 12))
    plan = compile_network(net, IDEAL, 1000.0, x, margin=0.0, prune_margin=None, lead=0.0)
    # Inputs far larger than the calibration data arrive after the deadline.
    late = simulate(plan, x * 50)
    assert late.layers[0].timed_out.sum() > 0
    assert simulate(plan, x).layers[0].timed_out.sum() == 0


def test_flood_copy_order_shifts_earlier_ports():
    # The bridge floods the port attached last (the plan's last) first.
    rng = np.random.default_rng(2)
    net = random_net(rng)
    x = rng.random((4, 12))
    flat = compile_network(net, IDEAL, 1000.0, x, prune_margin=None, lead=0.0, delay_lines="per-synapse")
    slow = compile_network(net, Realisation("netem", "netem", min_delay_us=0.0, flood_copy_us=10.0), 1000.0, x,
                           prune_margin=None, lead=0.0, delay_lines="per-synapse")
    a = simulate(flat, x).layers[0].passed_us
    b = simulate(slow, x).layers[0].passed_us
    shift = np.nanmean(b - a, axis=(0, 2))
    np.testing.assert_allclose(shift, np.arange(len(shift))[::-1] * 10.0, atol=1e-6)


def plain_and_variant(seed: int, samples: int, **variant):
    """Calibration inputs, and a random network compiled on them as is and with `variant` options."""
    rng = np.random.default_rng(seed)
    net = random_net(rng, (4, 3))
    x = rng.random((samples, 12)) * 2
    options = {"margin": 1.0, "prune_margin": None, "lead": 0.0}
    return x, compile_network(net, IDEAL, 1e6, x, **options), compile_network(net, IDEAL, 1e6, x, **{**options, **variant})


def test_pruned_synapses_change_nothing_on_the_calibration_data():
    # A pruned synapse never was among its port's K earliest on the calibration data (margin 0),
    # so leaving it out cannot change any T± there; on other data it may.
    x, full, pruned = plain_and_variant(4, 40, prune_margin=0.0)
    def kept(plan):
        return sum(len(port.synapses) for layer in plan.layers for port in layer.ports)
    assert kept(pruned) < kept(full)
    for a, b in zip(simulate(full, x).layers, simulate(pruned, x).layers):
        np.testing.assert_array_equal(a.t_plus, b.t_plus)
        np.testing.assert_array_equal(a.t_minus, b.t_minus)


def test_loss_drops_spikes_before_the_gate_with_the_plans_probability():
    rng = np.random.default_rng(5)
    net = random_net(rng, (12, 6))
    x = rng.random((400, 12))
    lossy = Realisation("full", "netem", min_delay_us=0.0, flood_copy_us=0.0, max_delay_us=1e9, loss_kind="bpf-drop")
    # A window far beyond every arrival: only the losses keep spikes from the gate.
    plan = compile_network(net, lossy, 1000.0, x, margin=1e3, loss=0.5, prune_margin=None, lead=0.0)
    clean = compile_network(net, lossy, 1000.0, x, margin=1e3, prune_margin=None, lead=0.0)
    # K = n = 12 of 2n = 24 arrivals: a port passes K only when at least 12 of its 24 spikes survive.
    passed = np.isfinite(simulate(plan, x).layers[0].passed_us)
    assert 0.53 < passed.all(axis=2).mean() < 0.63  # P(Binomial(24, 1/2) ≥ 12) = 0.58
    assert np.isfinite(simulate(clean, x).layers[0].passed_us).all()
    np.testing.assert_array_equal(simulate(plan, x).scores, simulate(plan, x, seed=0).scores)
    assert not np.array_equal(simulate(plan, x, seed=1).scores, simulate(plan, x, seed=0).scores)


def test_leads_move_injections_but_not_arrivals():
    # An event sent its lead early through classes holding it that much longer arrives when it
    # would have without a lead: the simulation of the model is unchanged by leads.
    x, plain, led = plain_and_variant(6, 30, lead=1.0)
    for a, b, layer in zip(simulate(plain, x).layers, simulate(led, x).layers, led.layers):
        leads = np.asarray(layer.leads_us).reshape(2, layer.n_inputs).T
        # netem rounds each delay to whole µs (1e-6 model units at τ = 1 s), which s = 10 amplifies
        # into the next layer's inputs: tolerances of 1e-4 model units.
        np.testing.assert_allclose(b.inject_us, a.inject_us - leads[None], atol=100.0)
        np.testing.assert_allclose(b.passed_us, a.passed_us, atol=100.0)
        np.testing.assert_allclose(b.y, a.y, atol=1e-4)
        assert np.abs(b.inject_us - a.inject_us).max() > 0.5e6  # the leads are there


def test_measured_noise_moves_every_neurons_y_by_a_drawn_error_and_keeps_the_losses():
    rng = np.random.default_rng(2)
    net = random_net(rng, (3, 2))
    x = rng.random((16, 12))
    plan = compile_network(net, IDEAL, 1000.0, x, margin=1.0, prune_margin=None, lead=0.0, loss=0.25)
    plain = simulate(plan, x)
    shifted = simulate(plan, x, noise_us=[np.array([7.0]), np.array([0.0])])  # one value: every y of layer 0 +7 µs
    np.testing.assert_allclose(shifted.layers[0].y, plain.layers[0].y + 7.0 / 1000.0)
    np.testing.assert_array_equal(shifted.layers[0].t_minus, plain.layers[0].t_minus)
    np.testing.assert_array_equal(shifted.layers[0].passed_us, plain.layers[0].passed_us)  # the same losses
    assert np.array_equal(simulate(plan, x, noise_us=[np.array([0.0])] * 2).scores, plain.scores)
    spread = simulate(plan, x, noise_us=[np.array([-400.0, 400.0])] * 2)  # ±0.4 τ at random
    assert not np.allclose(spread.scores, plain.scores)
    with pytest.raises(Exception, match="noise_us has 1 layers"):
        simulate(plan, x, noise_us=[np.array([0.0])])


def test_shared_lines_deliver_what_a_class_per_synapse_delivers():
    # With no flood cost both designs realise the same delays, so every neuron event is the same;
    # the shared plan's arrivals come from its lines (LayerPlan.port_delays_us), not its ports.
    rng = np.random.default_rng(5)
    net = random_net(rng, (3, 2), bits=3)
    x = rng.random((30, 12)) * 2
    shared = compile_network(net, IDEAL, 1000.0, x, prune_margin=0.0, lead=0.5)
    per_synapse = compile_network(net, IDEAL, 1000.0, x, prune_margin=0.0, lead=0.5, delay_lines="per-synapse")
    assert shared.delay_lines == "shared" and shared.layers[0].lines
    for a, b in zip(simulate(shared, x).layers, simulate(per_synapse, x).layers):
        np.testing.assert_array_equal(a.passed_us, b.passed_us)
        np.testing.assert_array_equal(a.y, b.y)
    # Pruned synapses are in no line: those ports never get the event.
    layer = shared.layers[0]
    fed = np.zeros((len(layer.ports), layer.n_inputs, 2), dtype=bool)
    for line in layer.lines:
        fed[list(line.members), line.source, line.sign] = True
    assert (~fed).any() and np.array_equal(np.isfinite(layer.port_delays_us()), fed)


def test_simulation_of_a_conv_plan_equals_the_golden_model():
    # A LeNet in small: conv (s = 1) and 2×2 pooling, conv, then dense with rectified scores (LeNet5_K's recipe).
    rng = np.random.default_rng(8)
    layers = (ConvLayer(rng.normal(size=(3, 1, 3, 3)), 5, (1, 10, 10), pool=2, s=1.0),
              ConvLayer(rng.normal(size=(4, 3, 2, 2)), 6, (3, 4, 4), pool=3),
              DenseLayer(rng.normal(size=(4, 5)), 3))
    net = Pi2Network(layers, (1, 10, 10), rectified=True)
    x = rng.random((40, 1, 10, 10))
    plan = compile_network(net, IDEAL, 1e6, x, margin=1.0, prune_margin=None, lead=0.0)
    assert [len(layer.ports) for layer in plan.layers] == [2 * 3 * 8 * 8, 2 * 4 * 3 * 3, 10]
    result = simulate(plan, x.reshape(len(x), -1))
    np.testing.assert_allclose(result.scores, net.scores(x), atol=1e-3)
    golden = net.trace(x)
    for sim_layer, gold in zip(result.layers, golden):
        np.testing.assert_allclose(sim_layer.y, gold.y.reshape(len(x), -1), atol=1e-5)
    assert (result.scores == 0).any() and (result.scores > 0).any()  # the rectifier is in play
    clear = np.diff(np.sort(net.scores(x), axis=1)[:, -2:], axis=1)[:, 0] > 1e-2
    assert clear.mean() > 0.5 and (result.predictions == net.predict(x))[clear].all()


def test_a_sample_arrives_the_same_in_any_bank():
    # Banks give a line more classes of its one delay: every sample's arrivals, hence every
    # decision, are those of the plan with one bank.
    rng = np.random.default_rng(6)
    net = random_net(rng, (3, 2), bits=3)
    x = rng.random((30, 12)) * 2
    one = compile_network(net, IDEAL, 1000.0, x, prune_margin=0.0, lead=0.0)
    four = compile_network(net, IDEAL, 1000.0, x, prune_margin=0.0, lead=0.0, banks=4)
    assert four.timing.banks == 4 and four.timing.period_us < one.timing.period_us
    for a, b in zip(simulate(one, x).layers, simulate(four, x).layers):
        np.testing.assert_array_equal(a.passed_us, b.passed_us)
        np.testing.assert_array_equal(a.y, b.y)

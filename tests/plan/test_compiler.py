from dataclasses import replace

import numpy as np
import pytest

from testbed.errors import PlanError
from testbed.model.encoding import delays
from testbed.model.network import Affine, ConvLayer, DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network, primer_delay_us, realise_delay, synapse_classid
from testbed.plan.fabric_plan import SIGN_MINUS, SIGN_PLUS, load_plan, plan_from_dict

SHAPER = Realisation("shaper", "htb-primer", primer_bytes=1514, burst_bytes=1, min_delay_us=20.0)
NETEM = Realisation("netem", "netem", min_delay_us=0.0)


def tiny(bits=None, k=(1, 2)):
    # 3 inputs, 2 hidden, 2 classes; weights chosen so some delays are 0 (w = -c) and some 2c.
    w0 = np.array([[-3.0, 1.0], [0.5, 3.0], [0.0, -1.5]])
    w1 = np.array([[2.0, -2.0], [1.0, 0.25]])
    return Pi2Network((DenseLayer(w0, k[0]), DenseLayer(w1, k[1])), (3,), bits=bits)


def test_counts_of_ports_classes_filters_and_gates():
    net = tiny()
    plan = compile_network(net, SHAPER, 1000.0, np.random.default_rng(0).random((20, 3)), prune_margin=None, lead=0.0,
                           delay_lines="per-synapse")
    assert [len(layer.ports) for layer in plan.layers] == [4, 4]
    for layer in plan.layers:
        for port in layer.ports:
            assert len(port.synapses) == 2 * layer.n_inputs
            shaped = [s for s in port.synapses if s.classid is not None]
            assert len(port.delay_tc.classes) == len(shaped)
            assert [(f.kind, f.params["program"], f.params["direct_action"]) for f in port.delay_tc.filters] == [
                ("bpf", "synapse_classifier", 0)]
            assert [f.kind for f in port.gate_tc.filters] == ["bpf"]
            assert port.gate_tc.filters[0].params["k"] == layer.k
    # w = -3 = -c gives d⁺ = 0: unshaped on z⁺ for t⁺, and d⁻ = 2c on the same port for t⁻.
    z_plus_0 = plan.layers[0].ports[0]
    by_event = {(s.source, s.sign): s for s in z_plus_0.synapses}
    assert by_event[(0, SIGN_PLUS)].classid is None and by_event[(0, SIGN_PLUS)].delay_us == 0.0
    assert by_event[(0, SIGN_MINUS)].target_us == pytest.approx(6000.0)


def test_port_delays_mirror_the_model():
    net = tiny(bits=4)
    plan = compile_network(net, NETEM, 500.0, np.zeros((1, 3)), prune_margin=None, lead=0.0)
    d_plus, d_minus = delays(net.layers[0].weight, 3.0, 4)
    for port in plan.layers[0].ports:
        j = port.neuron
        for s in port.synapses:
            same = (s.sign == SIGN_PLUS) == (port.sign == SIGN_PLUS)
            expected = (d_plus if same else d_minus)[s.source, j] * 500.0
            assert s.target_us == pytest.approx(expected)
            assert s.delay_us == round(expected)


def test_classes_are_numbered_as_the_classifier_computes_them():
    plan = compile_network(tiny(), SHAPER, 1000.0, np.zeros((1, 3)), prune_margin=None, lead=0.0,
                           delay_lines="per-synapse")
    port = plan.layers[1].ports[3]
    assert port.delay_tc.filters[0].params["layer"] == 1
    shaped = {s.classid for s in port.synapses if s.classid is not None}
    assert shaped == {c.classid for c in port.delay_tc.classes}
    for s in port.synapses:
        assert s.classid in (None, synapse_classid(s.source, s.sign))


def test_primer_rates_realise_the_target_delay():
    for target in (25.0, 400.0, 2000.0, 6000.0):
        realised, rate = realise_delay(target, SHAPER)
        assert realised == pytest.approx(primer_delay_us(rate, 1514, 1))
        assert realised == pytest.approx(target, rel=1e-3)
    assert realise_delay(5.0, SHAPER) == (0.0, None)


def test_plan_json_round_trip(tmp_path):
    plan = compile_network(tiny(bits=4), SHAPER, 1000.0, np.random.default_rng(1).random((10, 3)),
                           prune_margin=None, lead=0.0)
    assert load_plan(plan.save(tmp_path / "plan.json")) == plan


def test_windows_cover_the_calibration_data():
    net = tiny()
    x = np.random.default_rng(2).random((50, 3)) * 2
    plan = compile_network(net, NETEM, 1000.0, x, margin=0.5, prune_margin=None, lead=0.0)
    assert all(layer.window_us > 0 for layer in plan.layers)
    assert plan.timing.period_us >= max(layer.window_us for layer in plan.layers) - 0.5 * 1000.0


def hand_conv(**layer):
    # 1×4×4 inputs, 2 channels of 3×3 kernels: channel 0 all w = 0 (d⁺ = d⁻ = 3), channel 1 all
    # w = 1 (d⁺ = 4, d⁻ = 2), so each event meets 3 distinct delays: 2, 3 and 4 model units.
    weight = np.stack([np.zeros((1, 3, 3)), np.ones((1, 3, 3))])
    return Pi2Network((ConvLayer(weight, 4, (1, 4, 4), **layer),), (1, 4, 4))


def test_conv_plan_counts_of_a_hand_made_conv_layer():
    plan = compile_network(hand_conv(), NETEM, 1000.0, np.zeros((1, 1, 4, 4)), prune_margin=None, lead=0.0)
    layer = plan.layers[0]
    assert (layer.n_inputs, layer.n_neurons, layer.shape, len(layer.ports)) == (16, 8, (2, 2, 2), 16)
    # Each port keeps exactly its receptive field: neuron (channel, row, col) sees pixels
    # (row + a, col + b), a, b in 0..2, both events of each.
    for port in layer.ports:
        row, col = divmod(port.neuron % 4, 2)
        assert sorted((s.source, s.sign) for s in port.synapses) == sorted(
            ((row + a) * 4 + col + b, sign) for a in range(3) for b in range(3) for sign in (SIGN_PLUS, SIGN_MINUS))
    # Pixel (r, c) lies in a(r)·a(c) fields, a = (1, 2, 2, 1). Each of its events has three
    # lines: 3τ to channel 0's z⁺ and z⁻ ports (2·a(r)·a(c) members), 2τ and 4τ to channel 1's
    # ports (t⁺: 2τ to z⁻, 4τ to z⁺; t⁻ the other way round), a(r)·a(c) members each.
    fields = np.outer([1, 2, 2, 1], [1, 2, 2, 1]).ravel()
    ch1 = {q for q, p in enumerate(layer.ports) if p.neuron >= 4}
    for pixel, npos in enumerate(fields.tolist()):
        for sign in (SIGN_PLUS, SIGN_MINUS):
            lines = [ln for ln in layer.lines if (ln.source, ln.sign) == (pixel, sign)]
            assert [(ln.line, ln.target_us, len(ln.members)) for ln in lines] == [
                (1, 2000.0, npos), (2, 3000.0, 2 * npos), (3, 4000.0, npos)]
            for line, port_sign in ((lines[0], 1 - sign), (lines[2], sign)):
                assert set(line.members) <= ch1 and {layer.ports[q].sign for q in line.members} == {port_sign}
            assert not set(lines[1].members) & ch1
    assert len(layer.lines) == 16 * 2 * 3
    # 96 lines shape one copy each (netem: no primers); the membership table counts them in place, the
    # clone fan-out copies 288 = 16 ports × 18 synapses.
    assert plan.packets_per_sample == {"injected": 32, "port_copies": 0, "pruned": 0, "shaped": 96,
                                       "line_copies": 96}
    clone = compile_network(hand_conv(), NETEM, 1000.0, np.zeros((1, 1, 4, 4)), prune_margin=None, lead=0.0,
                            delay_lines="shared-clone").packets_per_sample
    assert (clone["shaped"], clone["port_copies"]) == (96, 288)
    # A class per synapse shapes all 288 and floods 32 events × 16 ports, dropping the 224 copies
    # outside each port's field before its shaper.
    per_synapse = compile_network(hand_conv(), NETEM, 1000.0, np.zeros((1, 1, 4, 4)), prune_margin=None, lead=0.0,
                                  delay_lines="per-synapse").packets_per_sample
    assert (per_synapse["shaped"], per_synapse["port_copies"], per_synapse["pruned"]) == (288, 512, 224)


def test_conv_plans_carry_the_relays_scale_pooling_and_rectified_scores(tmp_path):
    rng = np.random.default_rng(3)
    conv = ConvLayer(rng.normal(size=(2, 1, 3, 3)), 3, (1, 6, 6), pool=2, s=1.0)
    net = Pi2Network((conv, DenseLayer(rng.normal(size=(8, 3)), 4)), (1, 6, 6), rectified=True)
    plan = compile_network(net, NETEM, 1000.0, rng.random((5, 1, 6, 6)), prune_margin=None, lead=0.0)
    assert [(ly.shape, ly.pool, ly.s, ly.out_shape) for ly in plan.layers] == [
        ((2, 4, 4), 2, 1.0, (2, 2, 2)), ((3,), 1, 10.0, (3,))]
    assert plan.rectified and plan.layers[1].n_inputs == 8
    assert load_plan(plan.save(tmp_path / "plan.json")) == plan
    y = rng.normal(size=(4, 32))
    np.testing.assert_array_equal(plan.layers[0].relay(y), net.hidden_output(0, y.reshape(4, 2, 4, 4), []).reshape(4, -1))
    np.testing.assert_array_equal(plan.scores(y[:, :3]), net.output_scores(y[:, :3]))


@pytest.mark.parametrize("change, words", [
    (lambda layer: replace(layer, padding=1), "padding 1"),
    (lambda layer: replace(layer, affine=Affine(np.ones(2), np.zeros(2))), "affine map"),
], ids=["padding", "affine"])
def test_what_the_relay_cannot_compute_is_refused_with_a_reason(change, words):
    net = hand_conv()
    net = replace(net, layers=(change(net.layers[0]),))
    with pytest.raises(PlanError, match=f"{words}.*`pi2 eval`"):
        compile_network(net, NETEM, 1000.0, np.zeros((1, 1, 4, 4)), prune_margin=None, lead=0.0)


def test_bad_tau_is_refused():
    with pytest.raises(PlanError, match="tau"):
        compile_network(tiny(), SHAPER, 0.0, np.zeros((1, 3)), prune_margin=None, lead=0.0)


def test_pruning_leaves_out_synapses_that_never_reach_the_first_k():
    rng = np.random.default_rng(3)
    net = Pi2Network((DenseLayer(rng.normal(size=(10, 4)), 2), DenseLayer(rng.normal(size=(4, 3)), 1)), (10,))
    x = rng.random((50, 10))
    full = compile_network(net, SHAPER, 1000.0, x, prune_margin=None, lead=0.0, delay_lines="per-synapse")
    pruned = compile_network(net, SHAPER, 1000.0, x, prune_margin=0.0, lead=0.0, delay_lines="per-synapse")
    for layer_full, layer in zip(full.layers, pruned.layers):
        for port_full, port in zip(layer_full.ports, layer.ports):
            kept = {(s.source, s.sign) for s in port.synapses}
            assert layer.k <= len(kept) <= len(port_full.synapses)
            assert kept <= {(s.source, s.sign) for s in port_full.synapses}
            programs = [f.params["program"] for f in port.delay_tc.filters]
            if len(kept) < 2 * layer.n_inputs:
                assert programs == ["synapse_classifier", "synapse_filter"]
                assert port.delay_tc.filters[1].parent == "ffff:fff3"
                assert port.delay_tc.filters[1].params["events"] == 2 * layer.n_inputs
                assert [q.kind for q in port.delay_tc.qdiscs] == ["htb", "clsact"]
            else:
                assert programs == ["synapse_classifier"]
            assert len(port.delay_tc.classes) == sum(s.classid is not None for s in port.synapses)
    counts = pruned.packets_per_sample
    assert counts["pruned"] > 0
    assert counts["port_copies"] == full.packets_per_sample["port_copies"]
    assert counts["shaped"] < full.packets_per_sample["shaped"]
    # A larger margin keeps at least as much.
    wider = compile_network(net, SHAPER, 1000.0, x, prune_margin=1.0, lead=0.0)
    assert wider.packets_per_sample["pruned"] <= counts["pruned"]


def test_negative_prune_margin_is_refused():
    with pytest.raises(PlanError, match="prune margin"):
        compile_network(tiny(), SHAPER, 1000.0, np.zeros((1, 3)), prune_margin=-0.1, lead=0.0)


FULL = Realisation("full", "netem", min_delay_us=0.0, loss_kind="gact-random")


def test_loss_puts_a_random_drop_before_every_gate():
    net = tiny()
    plan = compile_network(net, FULL, 1000.0, np.random.default_rng(0).random((20, 3)), loss=0.1,
                           prune_margin=None, lead=0.0, delay_lines="shared-clone")
    for layer in plan.layers:
        for port in layer.ports:
            drop, gate = port.gate_tc.filters
            assert (drop.kind, drop.prio, drop.params["drop_one_in"], drop.params["mask"]) == ("u32", 1, 10, 0)
            assert (gate.kind, gate.prio, gate.params["program"]) == ("bpf", 2, "first_k_gate")
    assert [row["loss"] for row in plan.summary()["layers"]] == [0.1, 0.1]
    assert compile_network(net, FULL, 1000.0, np.zeros((1, 3)),
                           prune_margin=None, lead=0.0).summary()["layers"][0]["loss"] == 0.0


def test_a_port_side_loss_is_refused_where_no_spike_reaches_a_port():
    with pytest.raises(PlanError, match="membership table never sends spikes"):
        compile_network(tiny(), FULL, 1000.0, np.zeros((1, 3)), loss=0.1, prune_margin=None, lead=0.0,
                        delay_lines="shared")


def test_bpf_drop_loss_is_the_gates_own_first_step():
    plan = compile_network(tiny(), SHAPER, 1000.0, np.zeros((1, 3)), loss=0.25, prune_margin=None, lead=0.0)
    for port in plan.layers[0].ports:
        (gate,) = port.gate_tc.filters
        assert (gate.kind, gate.params["program"], gate.params["drop_one_in"]) == ("bpf", "first_k_gate", 4)
    assert plan.summary()["layers"][0]["loss"] == 0.25
    plain = compile_network(tiny(), SHAPER, 1000.0, np.zeros((1, 3)), prune_margin=None, lead=0.0)
    assert all("drop_one_in" not in port.gate_tc.filters[0].params for port in plain.layers[0].ports)


def test_loss_survives_the_plan_json(tmp_path):
    plan = compile_network(tiny(), FULL, 1000.0, np.zeros((1, 3)), loss=0.25, prune_margin=None, lead=0.0,
                           delay_lines="shared-clone")
    assert load_plan(plan.save(tmp_path / "p.json")) == plan


@pytest.mark.parametrize(("real", "loss", "words"), [
    (FULL, 0.3, r"loss 0.3: spikes drop with probability 1/N .* 0.333333 \(N = 3\) and 0.25 \(N = 4\)"),
    (FULL, 1.0, r"expected a drop probability in \[0, 1\)"),
    (FULL, 1e-6, r"N ≤ 65535"),
    (replace(NETEM, loss_kind="netem-loss"), 0.5,
     r"profile netem: its loss kind 'netem-loss' is not built by the compiler; use --profile shaper"),
])
def test_loss_the_profile_cannot_realise_is_refused(real, loss, words):
    with pytest.raises(PlanError, match=words):
        compile_network(tiny(), real, 1000.0, np.zeros((1, 3)), loss=loss, prune_margin=None, lead=0.0)


def test_leads_spread_each_layers_events_and_classes_hold_them_longer():
    net = tiny(bits=4)
    x = np.random.default_rng(5).random((20, 3))
    plain = compile_network(net, NETEM, 1000.0, x, prune_margin=None, lead=0.0)
    led = compile_network(net, NETEM, 1000.0, x, lead=0.5, prune_margin=None)
    assert all(max(layer.leads_us) == 0 for layer in plain.layers)
    for p_layer, l_layer in zip(plain.layers, led.layers):
        leads = np.asarray(l_layer.leads_us)
        # Evenly spaced over the layer's origin, which is at least the asked-for 0.5 τ.
        assert l_layer.origin_us >= 500.0 and leads.min() == 0 and leads.max() == l_layer.origin_us
        np.testing.assert_allclose(np.diff(leads), l_layer.origin_us / (len(leads) - 1))
        # t⁺ and t⁻ of one input (sent together by a zero input) are n of the 2n − 1 steps apart.
        n = l_layer.n_inputs
        assert leads[n] - leads[0] == pytest.approx(l_layer.origin_us * n / (2 * n - 1))
        for p_port, l_port in zip(p_layer.ports, l_layer.ports):
            for a, b in zip(p_port.synapses, l_port.synapses):
                assert b.delay_us == pytest.approx(a.delay_us + l_layer.lead_us(b.source, b.sign), abs=1.0)
    # The faster layer spreads over the slack the slower one leaves it, so the period grows by
    # no more than the asked-for lead on the slowest layer.
    assert led.timing.period_us <= plain.timing.period_us + 500.0 + 1.0
    assert max(layer.origin_us for layer in led.layers) > 500.0


def test_a_lead_beyond_the_profiles_longest_delay_is_refused():
    short = Realisation("shaper", "htb-primer", min_delay_us=20.0, max_delay_us=10_000.0)
    compile_network(tiny(), short, 1000.0, np.zeros((1, 3)), lead=3.0, prune_margin=None)  # 2c·τ + 3τ = 9 ms fits
    with pytest.raises(PlanError, match="--lead"):
        compile_network(tiny(), short, 1000.0, np.zeros((1, 3)), lead=5.0, prune_margin=None)


def test_negative_lead_is_refused():
    with pytest.raises(PlanError, match="lead must be"):
        compile_network(tiny(), SHAPER, 1000.0, np.zeros((1, 3)), lead=-1.0, prune_margin=None)


@pytest.mark.parametrize("lead", [0.0, 1.0])
def test_the_period_lets_every_class_recover_before_the_next_sample_reuses_it(lead):
    from testbed.plan.wire import SPIKE_FRAME_BYTES
    from testbed.sim.executor import simulate

    net = tiny(bits=4)
    x = np.random.default_rng(6).random((40, 3)) * 3
    # Little slack: margin 0.05 τ only covers the simulated layer-1 inputs differing from the
    # golden model's (quantised delays) by µs.
    plan = compile_network(net, SHAPER, 1000.0, x, margin=0.05, lead=lead, prune_margin=None)
    recover = 1 + SPIKE_FRAME_BYTES / (SHAPER.primer_bytes - SHAPER.burst_bytes)
    for layer, result in zip(plan.layers, simulate(plan, x).layers):
        held = np.where(np.isfinite(layer.port_delays_us()), layer.port_delays_us(), 0.0) * recover  # (ports, n, 2)
        free = result.inject_us[:, None] + held[None]  # (samples, ports, n, 2): class free again
        # Any sample after any other, a period later: its event enters no class still busy.
        next_in = result.inject_us.min(axis=0) + plan.timing.period_us
        assert (free.max(axis=0) <= next_in[None]).all()
        assert plan.timing.period_us >= layer.origin_us + layer.window_us + plan.timing.relay_us


# Shared delay lines. Weights repeat across the two neurons, so each event meets two delays over
# the four ports: t⁺ of input 0 reaches both z⁺ ports through c + 0.5 and both z⁻ ports through
# c − 0.5; input 1's weights are opposite, so its lines cross the neurons (z⁺ of 0 with z⁻ of 1).
SHARED_W = np.array([[0.5, 0.5], [1.5, -1.5], [2.5, 2.5]])


def shared_plan(delay_lines="shared", **options):
    net = Pi2Network((DenseLayer(SHARED_W, 2),), (3,))
    return compile_network(net, SHAPER, 1000.0, np.zeros((1, 3)), prune_margin=None, lead=0.0,
                           delay_lines=delay_lines, **options)


def test_shared_lines_of_a_hand_made_layer():
    plan = shared_plan()
    layer = plan.layers[0]
    assert plan.delay_lines == "shared"
    # Ports in plan order: 0 = z⁺ of neuron 0, 1 = z⁻ of 0, 2 = z⁺ of 1, 3 = z⁻ of 1.
    lines = {(ln.source, ln.sign, ln.line): (ln.target_us, ln.members) for ln in layer.lines}
    assert lines == {
        (0, SIGN_PLUS, 1): (2500.0, (1, 3)), (0, SIGN_PLUS, 2): (3500.0, (0, 2)),
        (1, SIGN_PLUS, 1): (1500.0, (1, 2)), (1, SIGN_PLUS, 2): (4500.0, (0, 3)),
        (2, SIGN_PLUS, 1): (500.0, (1, 3)), (2, SIGN_PLUS, 2): (5500.0, (0, 2)),
        (0, SIGN_MINUS, 1): (2500.0, (0, 2)), (0, SIGN_MINUS, 2): (3500.0, (1, 3)),
        (1, SIGN_MINUS, 1): (1500.0, (0, 3)), (1, SIGN_MINUS, 2): (4500.0, (1, 2)),
        (2, SIGN_MINUS, 1): (500.0, (0, 2)), (2, SIGN_MINUS, 2): (5500.0, (1, 3)),
    }
    # One class per line on the injector link, none on the ports; the splitter and the fan-out.
    assert [c for ln in layer.lines for c in ln.classids] == [c.classid for c in layer.line_tc.classes] == [
        f"1:{g:x}" for g in range(1, 13)]
    assert all(not p.delay_tc.classes and not p.delay_tc.filters for p in layer.ports)
    programs = [(f.params["program"], f.params["lines"], f.params["events"]) for f in
                layer.line_tc.filters + layer.fanout_tc.filters]
    assert programs == [("line_splitter", 2, 6), ("line_neurons", 2, 6)]
    clone = shared_plan("shared-clone")  # the same lines, copied to each member by the fan-out
    assert clone.layers[0].lines == layer.lines and clone.layers[0].line_tc == layer.line_tc
    assert [f.params["program"] for f in clone.layers[0].fanout_tc.filters] == ["line_fanout"]
    # Each port keeps its six synapses, delayed as its lines are.
    delays = layer.port_delays_us()
    for q, port in enumerate(layer.ports):
        assert {(s.source, s.sign): s.delay_us for s in port.synapses} == {
            (ln.source, ln.sign): ln.delay_us for ln in layer.lines if q in ln.members}
        for s in port.synapses:
            assert delays[q, s.source, s.sign] == s.delay_us
    # Shaped copies per sample: 12 lines × (primer + spike), against 6 events × 4 ports × 2; the
    # membership table copies nothing to a port, the fan-out one spike per synapse.
    shared, per_synapse = plan.packets_per_sample, shared_plan("per-synapse").packets_per_sample
    assert (shared["shaped"], shared["port_copies"], shared["line_copies"]) == (24, 0, 24)
    assert clone.packets_per_sample == {**shared, "port_copies": 24}
    assert (per_synapse["shaped"], per_synapse["port_copies"]) == (48, 48)
    assert plan.summary()["layers"][0]["lines"] == 12


def test_shared_lines_survive_the_json_round_trip_and_disagreeing_members_are_refused(tmp_path):
    plan = shared_plan()
    assert load_plan(plan.save(tmp_path / "plan.json")) == plan
    raw = plan.to_dict()
    raw["layers"][0]["lines"][0][6] = [1]  # line 1 of t⁺0 would no longer feed z⁻ of neuron 1
    with pytest.raises(PlanError, match="l0n1m's synapses are not the lines it is a member of"):
        plan_from_dict(raw)
    raw["layers"][0]["lines"][0][6] = [0, 1, 3]  # ... or would feed z⁺ of neuron 0 twice
    with pytest.raises(PlanError, match="l0n0p is a member of two lines"):
        plan_from_dict(raw)
    raw = plan.to_dict()
    raw["delay_lines"] = "per-synapse"
    with pytest.raises(PlanError, match="per-synapse plans none"):
        plan_from_dict(raw)


def test_pruned_synapses_are_in_no_line():
    x = np.zeros((1, 3))
    net = Pi2Network((DenseLayer(SHARED_W, 1),), (3,))
    plan = compile_network(net, SHAPER, 1000.0, x, prune_margin=0.0, lead=0.0)
    layer = plan.layers[0]
    members = sorted(q for ln in layer.lines for q in ln.members)
    assert members == sorted(q for q, p in enumerate(layer.ports) for _ in p.synapses)
    assert len(members) < 6 * len(layer.ports)


def test_more_distinct_delays_than_an_event_can_number_are_refused():
    # 200 neurons: the event meets c + w on the z⁺ ports and c − w on the z⁻ ports, 400 distinct delays.
    net = Pi2Network((DenseLayer(np.linspace(-2.9, 2.8, 200)[None, :], 1),), (1,))
    with pytest.raises(PlanError, match="--delay-lines per-synapse"):
        compile_network(net, SHAPER, 1000.0, np.zeros((1, 1)), prune_margin=None, lead=0.0)
    compile_network(net, SHAPER, 1000.0, np.zeros((1, 1)), prune_margin=None, lead=0.0, delay_lines="per-synapse")


def test_banks_give_each_line_a_class_per_bank_and_shrink_the_period_below_the_drain():
    one, two = shared_plan(), shared_plan(banks=2)
    assert (one.timing.banks, one.timing.layer_slots) == (1, 1)
    layer, banked = one.layers[0], two.layers[0]
    assert [ln.members for ln in banked.lines] == [ln.members for ln in layer.lines]
    assert all(len(ln.classids) == 2 for ln in banked.lines)
    assert len(banked.line_tc.classes) == 2 * len(layer.line_tc.classes)
    rates = {c.classid: c.params["rate_bps"] for c in banked.line_tc.classes}
    assert all(rates[a] == rates[b] for a, b in (ln.classids for ln in banked.lines))  # same delay in every bank
    assert banked.line_tc.filters[0].params["banks"] == 2
    # A class now serves every other sample: half the drain per period, and the layer's result,
    # due after its deadline and the relay, comes `layer_slots` periods later.
    drain_bound = max(ln.delay_us for ln in layer.lines)  # the period covers at least the longest delay...
    assert one.timing.period_us >= drain_bound and two.timing.period_us < one.timing.period_us
    assert two.timing.period_us >= drain_bound / 2  # ...over `banks` periods
    t = two.timing
    assert t.layer_slots * t.period_us >= banked.origin_us + banked.window_us + t.relay_us
    assert two.packets_per_sample == one.packets_per_sample  # a sample uses one bank
    with pytest.raises(PlanError, match="banks 3"):
        shared_plan(banks=3)
    with pytest.raises(PlanError, match="per-synapse"):
        shared_plan("per-synapse", banks=2)

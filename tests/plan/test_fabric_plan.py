import json

import numpy as np
import pytest

from testbed.errors import PlanError
from testbed.model.network import ConvLayer, DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.plan.fabric_plan import load_plan, plan_from_dict


@pytest.fixture
def plan_dict():
    net = Pi2Network((DenseLayer(np.eye(2), 1),), (2,))
    return compile_network(net, Realisation("shaper", "htb-primer"), 1000.0, np.zeros((1, 2)),
                           prune_margin=None, lead=0.0).to_dict()


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(PlanError, match="pi2 compile"):
        load_plan(tmp_path / "nope.json")


def test_not_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(PlanError, match="not a JSON plan"):
        load_plan(bad)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("timing"), "missing field 'timing'"),
    (lambda d: d.update(format="other"), "expected 'pi2-fabric-plan'"),
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d["layers"][0]["ports"][0].update(k=0), "k must be in"),
    (lambda d: d["layers"][0].update(window_us=-1), "window_us"),
    (lambda d: d["layers"][0]["ports"].pop(), "ports for"),
    (lambda d: d["layers"][0]["leads_us"].pop(), "leads_us"),
    (lambda d: d["layers"][0].pop("leads_us"), "missing field 'leads_us'"),
    (lambda d: d["layers"][0]["line_tc"]["classes"][0].update(params={"rate": 1}), "unknown parameter"),
    # issue 18: every field known, typed, in range and consistent
    (lambda d: d["layers"][0]["ports"][0]["delay_tc"].update(bogus=1), "unknown field 'bogus'"),
    (lambda d: d.update(comment="hi"), "unknown field 'comment'"),
    (lambda d: d["layers"][0]["ports"][0].update(gate="x"), "unknown field 'gate'"),
    (lambda d: d["layers"][0].update(window_us="40"), "window_us: expected a finite number"),
    (lambda d: d["layers"][0].update(window_us=1e300), "window_us must be in"),
    (lambda d: d["layers"][0]["ports"][0].update(k=1.5), "k: expected an integer"),
    (lambda d: d["layers"][0]["ports"][0].update(k=True), "k: expected an integer"),
    (lambda d: d["layers"][0].update(switch=["sw0"]), "switch: expected a string"),
    (lambda d: d["layers"][0].update(switch="sw0/../../x"), "interface names"),
    (lambda d: d["layers"][0].update(inject_if=d["layers"][0]["switch"]), "unique"),
    (lambda d: d["layers"][0]["ports"][0]["synapses"][0].__setitem__(0, 99), "source is ≥"),
    (lambda d: d["layers"][0]["ports"][0]["synapses"][0].__setitem__(4, "1:ff"), "does not define"),
    (lambda d: d["layers"][0]["ports"][0]["synapses"].append(d["layers"][0]["ports"][0]["synapses"][0]), "two synapses"),
    (lambda d: d["layers"][0]["ports"][0].update(neuron=7), "one z⁺ and one z⁻ port per neuron"),
    (lambda d: d["layers"][0]["line_tc"]["classes"][0]["params"].update(rate_bps="fast"), "finite number"),
    (lambda d: d["network"].update(k=[3]), "disagree"),
    (lambda d: d["constants"].update(q=1), "unknown field 'q'"),
    (lambda d: d["timing"].update(tau_us=None), "tau_us: expected a finite number"),
    (lambda d: d["packets"].update(primer_bytes=0), "need primers"),
    (lambda d: d.update(delay_kind="magic"), "delay_kind 'magic'"),
    (lambda d: d.update(layers=[]), "1..64 layers"),
    (lambda d: d.update(layers={"0": 1}), "layers: expected a list"),
    (lambda d: d["layers"][0].update(ports=[{}] * 65537), "at most 65536 ports"),  # refused before any is read
    # the relay's re-encoding (issue 14: convolutions)
    (lambda d: d["layers"][0].pop("pool"), "missing field 'pool'"),
    (lambda d: d["layers"][0].update(s=0), "s must be a finite number > 0"),
    (lambda d: d["layers"][0].update(s="10"), r"s: expected a finite number"),
    (lambda d: d["layers"][0].update(shape=[3]), r"shape \(3,\) must be .* product is the layer's 2 neurons"),
    (lambda d: d["layers"][0].update(shape=[1, 2]), r"shape \(1, 2\) must be \(m,\) or \(C, H, W\)"),
    (lambda d: d["layers"][0].update(shape=[2.0]), "shape: expected an integer"),
    (lambda d: d["layers"][0].update(pool=2), "pool 2 must be .* 1 unless the layer's shape is"),
    (lambda d: d["layers"][0].update(pool=0), "pool 0 must be an integer ≥ 1"),
    (lambda d: d.update(rectified=1), "rectified: expected true or false"),
    (lambda d: d.pop("rectified"), "missing field 'rectified'"),
])
def test_each_validation_error_is_one_line(plan_dict, edit, message):
    edit(plan_dict)
    with pytest.raises(PlanError, match=message) as info:
        plan_from_dict(json.loads(json.dumps(plan_dict)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["Infinity", "NaN", "-Infinity", "1e999"])
def test_non_finite_times_are_refused_on_load(plan_dict, tmp_path, text):
    """JSON's Infinity would overflow the pacing mid-run (issue 18); 1e999 parses as inf too."""
    plan_dict["layers"][0]["window_us"] = 12345.5
    path = tmp_path / "p.json"
    path.write_text(json.dumps(plan_dict).replace("12345.5", text))
    with pytest.raises(PlanError, match=f"{path}.*(not a number|window_us)") as info:
        load_plan(path)
    assert "\n" not in str(info.value)


def test_a_network_file_is_not_a_plan(tmp_path):
    net = tmp_path / "net.npz"
    np.savez(net, a=np.zeros(2))
    with pytest.raises(PlanError, match="network file, not a plan; compile it first"):
        load_plan(net)


def test_save_is_atomic_and_never_follows_a_symlink(plan_dict, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    out = tmp_path / "plan.json"
    out.symlink_to(victim)
    plan = plan_from_dict(plan_dict)
    plan.save(out)
    assert victim.read_text() == "keep" and not out.is_symlink() and load_plan(out) == plan
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_name_suffix_cap_is_the_kernels():
    from testbed.kernel.names import SUFFIX_MAX
    from testbed.plan.fabric_plan import NAME_SUFFIX_MAX

    assert NAME_SUFFIX_MAX == SUFFIX_MAX


def test_a_layers_inputs_must_be_what_the_previous_layer_passes_on():
    net = Pi2Network((ConvLayer(np.ones((2, 1, 2, 2)), 1, (1, 5, 5), pool=2), DenseLayer(np.ones((8, 2)), 1)), (1, 5, 5))
    raw = compile_network(net, Realisation("shaper", "htb-primer"), 1000.0, np.zeros((1, 1, 5, 5)),
                          prune_margin=None, lead=0.0).to_dict()
    assert plan_from_dict(json.loads(json.dumps(raw))).layers[0].out_shape == (2, 2, 2)
    raw["layers"][0]["pool"] = 1  # 2×4×4 = 32 values would reach a layer of 8 inputs
    with pytest.raises(PlanError, match=r"layer 1 has 8 inputs but layer 0 passes on 32 values \(shape \(2, 4, 4\)\)"):
        plan_from_dict(raw)
    raw["layers"][0]["pool"] = 5  # wider than the 4×4 grid
    with pytest.raises(PlanError, match="pool 5"):
        plan_from_dict(raw)

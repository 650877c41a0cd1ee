"""Placement of hand-made plans on hosts: balanced, splittable, printable, read back and checked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from testbed.errors import PlanError
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.plan.placement import Part, Placement, load_placement, part_cost, place, placement_from_dict
from testbed.plan.profiles import load_profile

HOSTS = ("localhost", "e1", "e2")


def hand_made(delay_lines: str):
    """6 inputs → 4 neurons → 2 neurons: layer 0 does 4·2·12 = 96 synapse events, layer 1 2·2·8 = 32."""
    rng = np.random.default_rng(3)
    net = Pi2Network((DenseLayer(rng.uniform(-2, 2, (6, 4)), 1), DenseLayer(rng.uniform(-2, 2, (4, 2)), 1)), (6,))
    return compile_network(net, Realisation.from_profile(load_profile("shaper")), 1000.0, np.zeros((1, 6)),
                           prune_margin=None, lead=0.0, delay_lines=delay_lines)


@pytest.fixture(scope="module")
def plan():
    return hand_made("per-synapse")


def test_a_layer_with_shared_lines_stays_whole():
    shared = hand_made("shared")
    assert [(p.layer, p.start, p.stop) for p in place(shared, HOSTS).parts] == [(0, 0, 4), (1, 0, 2)]
    with pytest.raises(PlanError, match="layer 0 has shared delay lines.*--delay-lines per-synapse"):
        place(shared, HOSTS, max_ports=4)


def test_costs_count_the_shaped_synapse_events(plan):
    assert part_cost(plan, 0, 0, 4) == 96 and part_cost(plan, 1, 0, 2) == 32
    assert part_cost(plan, 0, 1, 3) == 48


def test_one_host_takes_everything(plan):
    placement = place(plan, ("localhost",))
    assert placement.parts == (Part(0, "localhost", 0, 4), Part(1, "localhost", 0, 2))


def test_layers_go_to_the_least_loaded_host_and_localhost_last(plan):
    two = place(plan, HOSTS[:2])
    assert {(p.layer, p.host) for p in two.parts} == {(0, "e1"), (1, "localhost")}
    three = place(plan, HOSTS)
    assert {(p.layer, p.host) for p in three.parts} == {(0, "e2"), (1, "e1")}


def test_a_layer_too_large_splits_into_neuron_groups_with_both_signs_together(plan):
    placement = place(plan, HOSTS, max_ports=4)
    assert placement.layer_parts(0) == [Part(0, placement.host_of(0, 0), 0, 2), Part(0, placement.host_of(0, 2), 2, 4)]
    assert placement.host_of(0, 0) != placement.host_of(0, 2)
    assert placement.describe()[0] == f"layer 0 neurons 0..1 (4 ports) on {placement.host_of(0, 0)}"
    with pytest.raises(PlanError, match="whole neurons"):
        place(plan, HOSTS, max_ports=1)


def test_json_round_trip_and_file_override(plan, tmp_path):
    placement = place(plan, HOSTS, max_ports=4)
    assert placement_from_dict(json.loads(json.dumps(placement.to_dict()))) == Placement(
        placement.hosts, tuple(sorted(placement.parts, key=lambda p: (p.layer, p.start))))
    edited = placement.to_dict()
    edited["parts"] = [{"layer": 0, "host": "localhost", "neurons": [0, 4]}, {"layer": 1, "host": "e2", "neurons": [0, 2]}]
    path = tmp_path / "placement.json"
    path.write_text(json.dumps(edited))
    assert load_placement(path, plan, HOSTS).host_of(1, 1) == "e2"
    with pytest.raises(PlanError, match="differ from --cluster"):
        load_placement(path, plan, HOSTS[:2])


@pytest.mark.parametrize("parts, message", [
    ([(0, "localhost", 0, 3), (1, "localhost", 0, 2)], "cover 0..2"),
    ([(0, "localhost", 0, 3), (0, "e1", 2, 4), (1, "e1", 0, 2)], "in two parts"),
    ([(0, "localhost", 1, 4), (1, "e1", 0, 2)], "in no part"),
    ([(0, "nowhere", 0, 4), (1, "e1", 0, 2)], "not in the cluster"),
    ([(0, "e1", 0, 4), (1, "e1", 0, 2), (2, "e1", 0, 1)], "not in the plan"),
])
def test_bad_placements_say_what_is_wrong(plan, parts, message):
    with pytest.raises(PlanError, match=message):
        Placement(HOSTS, tuple(Part(*p) for p in parts)).check(plan)


def test_bad_json_is_refused(tmp_path):
    with pytest.raises(PlanError, match="format 'pi2-placement'"):
        placement_from_dict({"hosts": ["localhost"], "parts": []})
    with pytest.raises(PlanError, match="keys"):
        placement_from_dict({"format": "pi2-placement", "hosts": ["localhost"], "parts": [{"layer": 0}]})

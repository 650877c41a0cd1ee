import json

import numpy as np
import pytest

from testbed.errors import PlanError
from testbed.model.network import DenseLayer, Pi2Network
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
    (lambda d: d["layers"][0]["ports"][0]["delay_tc"]["classes"][0].update(params={"rate": 1}), "unknown parameter"),
])
def test_each_validation_error_is_one_line(plan_dict, edit, message):
    edit(plan_dict)
    with pytest.raises(PlanError, match=message) as info:
        plan_from_dict(json.loads(json.dumps(plan_dict)))
    assert "\n" not in str(info.value)

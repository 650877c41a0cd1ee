import numpy as np
import pytest

from testbed.errors import KernelError
from testbed.fabric.live import build_fabric
from testbed.model.network import ConvLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network


def test_a_layer_wider_than_one_machine_builds_is_refused_before_anything_is_made(monkeypatch):
    # 3 channels × 10 × 10 = 300 neurons = 600 ports: a plan may describe it, the simulator runs it.
    net = Pi2Network((ConvLayer(np.ones((3, 1, 3, 3)), 2, (1, 12, 12)),), (1, 12, 12))
    plan = compile_network(net, Realisation("shaper", "htb-primer"), 1000.0, np.zeros((1, 1, 12, 12)),
                           prune_margin=None, lead=0.0)
    monkeypatch.setattr("testbed.kernel.cleanup.require_root", lambda purpose: pytest.fail("got as far as root"))
    with pytest.raises(KernelError, match="layer 0 has 600 neuron ports .* at most 512 per layer.*`pi2 simulate`"):
        with build_fabric(plan):
            pass

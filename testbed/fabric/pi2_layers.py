"""π² layers as a Mininet topology: one switch per layer, one relay host wired to all of them.

Layer l (n_l inputs, n_{l+1} neurons) is a switch ``sw<l>`` with 1 + 2·n_{l+1} links to the relay
host: its injector link (the relay sends the layer's spikes into the switch, which floods them)
and one link per neuron port (z⁺ and z⁻ of each neuron: the switch end carries the synapse delay
classes, the relay end the first-K gate). The relay never forwards between its links, so the many
parallel links form no loop. This is the wiring `testbed.fabric.mininet_backend` builds a
FabricPlan on; the delays and gates are added afterwards by the testbed (not by TCLink).

From the command line (sizes = inputs, then neurons of each layer; a Linux bridge, no controller)::

    mn --custom topologies/pi2_layers.py --topo pi2layers,8,4,2 --switch lxbr --controller none --test pingall

(`prefix=p2abcd` names every node and link ``p2abcd…`` so the testbed's `pi2 clean` can find
them.) Mininet names the links itself there; the testbed passes `layers` with explicit names.
This file imports only Mininet: `mn` runs it with the system Python. It ships inside the package
(testbed.fabric.pi2_layers, what the Mininet backend imports, so an installed testbed needs no
checkout); the repository's topologies/pi2_layers.py is a symlink to it, for `mn --custom`.
"""

from mininet.topo import Topo

MAX_MN_PORTS = 48  # Mininet names links <node>-eth<N>: keep <switch>-ethNN within 15 bytes


def sized_layers(sizes, prefix=""):
    """Layer specs for `sizes` (inputs, neurons of layer 0, neurons of layer 1, ...), letting
    Mininet name the links: [{"switch", "dpid", "links": [(None, None), ...]}, ...]."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError("pi2layers needs at least two sizes ≥ 1 (inputs, neurons...), e.g. pi2layers,8,4,2; "
                         f"got {sizes}")
    layers = []
    for index, neurons in enumerate(sizes[1:]):
        if 1 + 2 * neurons > MAX_MN_PORTS:
            raise ValueError(f"pi2layers: layer {index} has {neurons} neurons = {1 + 2 * neurons} links; the "
                             f"command-line form takes at most {(MAX_MN_PORTS - 1) // 2} neurons per layer")
        layers.append({"switch": f"{prefix}sw{index}", "dpid": f"{index + 1:016x}",
                       "links": [(None, None)] * (1 + 2 * neurons)})
    return layers


class Pi2LayersTopo(Topo):
    """One switch per π² layer; one relay host linked to each switch by its injector link and
    one link per neuron port.

    `layers`: [{"switch": name, "dpid": 16 hex digits, "links": [(relay_intf, switch_intf), ...]}],
    the injector link first; interface names None let Mininet choose. Without `layers`, `sizes`
    (inputs, neurons per layer) describe the network, as in ``--topo pi2layers,8,4,2``.
    `host_params` go to the relay host (e.g. ``{"ip": None}``: no address, spikes need none).
    """

    def build(self, *sizes, layers=None, relay="h", prefix="", host_params=None):
        if layers is None:
            layers = sized_layers(sizes, prefix)
            relay = prefix + relay
        host = self.addHost(relay, **(host_params or {}))
        for layer in layers:
            switch = self.addSwitch(layer["switch"], dpid=layer["dpid"])
            for relay_intf, switch_intf in layer["links"]:
                names = {}
                if relay_intf is not None:
                    names["intfName1"] = relay_intf
                if switch_intf is not None:
                    names["intfName2"] = switch_intf
                self.addLink(host, switch, **names)


topos = {"pi2layers": Pi2LayersTopo}

"""Dense π² networks to NIR graphs and back: exact round trips, plain chains, refusals."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from testbed.errors import ImportFormatError, ModelError
from testbed.model.encoding import Constants
from testbed.model.netfile import network_meta
from testbed.model.network import ConvLayer, DenseLayer, Pi2Network

nir = pytest.importorskip("nir")

from testbed.model.nir_io import export_nir, import_nir, network_from_nir, network_to_nir  # noqa: E402


def mlp(input_shape=(12,), sizes=(12, 8, 5), k=(3, 4), **kwargs):
    rng = np.random.default_rng(0)
    layers = tuple(DenseLayer(rng.normal(0, 1.5, (n, m)), kk) for n, m, kk in zip(sizes, sizes[1:], k))
    return Pi2Network(layers, input_shape, **kwargs)


NETS = {
    "plain": mlp(),
    "image input": mlp((1, 3, 4)),
    "temp, bits, constants": mlp(constants=Constants(2.0, 2.5, 7.0), bits=4, gamma=1.25,
                                 provenance={"dataset": {"name": "digits", "scale": 0.2, "offset": -1.0}, "seed": 5}),
}
# a hidden layer with its own s (the last layer's s becomes the network's constant on import)
NETS["per-layer s"] = Pi2Network((replace(NETS["plain"].layers[0], s=1.0), NETS["plain"].layers[1]), (12,))


@pytest.mark.parametrize("name", NETS)
def test_file_round_trip_same_scores(tmp_path, name):
    net = NETS[name]
    back = import_nir(export_nir(net, tmp_path / "net.nir"))
    x = np.random.default_rng(1).normal(size=(9, *net.input_shape))
    np.testing.assert_array_equal(back.scores(x), net.scores(x))
    assert network_meta(back) == network_meta(net)
    for a, b in zip(back.layers, net.layers):
        np.testing.assert_array_equal(a.weight, b.weight)


@pytest.mark.parametrize("change", [lambda net: replace(net, rectified=True),
                                    lambda net: replace(net, layers=(replace(net.layers[0], residual=0),
                                                                     net.layers[1]))], ids=["rectified", "residual"])
def test_export_refuses_what_nir_chains_cannot_say(change):
    with pytest.raises(ModelError, match="NIR export covers"):
        network_to_nir(change(Pi2Network(tuple(DenseLayer(np.ones((4, 4)), 1) for _ in range(2)), (4,))))


def test_graph_shape_follows_the_convention():
    net = NETS["image input"]
    graph = network_to_nir(net)
    chain = ["input", "flatten", "layer0.synapse", "layer0.neuron", "layer1.synapse", "layer1.neuron", "output"]
    assert graph.edges == list(zip(chain, chain[1:]))
    assert isinstance(graph.nodes["flatten"], nir.Flatten)
    np.testing.assert_array_equal(graph.nodes["layer0.synapse"].weight, net.layers[0].weight.T)  # out×in
    np.testing.assert_array_equal(graph.nodes["layer1.neuron"].scale, np.full(5, -10.0))
    assert graph.nodes["layer1.neuron"].metadata == {"pi2_k": 4}
    assert graph.metadata["pi2_convention"] == 1 and graph.metadata["pi2_neuron"] == "pi2"
    assert json.loads(graph.metadata["pi2_provenance"]) == {}


def test_conv_networks_are_not_exported():
    conv = ConvLayer(np.zeros((2, 1, 3, 3)), 1, (1, 4, 4))
    net = Pi2Network((conv, DenseLayer(np.zeros((8, 2)), 1)), (1, 4, 4))
    with pytest.raises(ModelError, match="dense π² networks only; layer 0 is a ConvLayer"):
        network_to_nir(net)


def plain_chain(*middle, input_shape=(12,), type_check=True):
    nodes = {"in": nir.Input(input_type=np.array(input_shape))}
    names = ["in"]
    for i, node in enumerate(middle):
        nodes[f"n{i}"] = node
        names.append(f"n{i}")
    last = middle[-1]
    nodes["out"] = nir.Output(output_type=np.array(last.output_type["output"]))
    names.append("out")
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])), type_check=type_check)


def test_plain_linear_chain_takes_k_from_caller(tmp_path):
    net = mlp()
    graph = plain_chain(nir.Linear(weight=net.layers[0].weight.T.copy()),
                        nir.Affine(weight=net.layers[1].weight.T.copy(), bias=np.zeros(5)))
    nir.write(tmp_path / "plain.nir", graph)
    back = import_nir(tmp_path / "plain.nir", k=[3, 4])
    x = np.random.default_rng(2).normal(size=(5, 12))
    np.testing.assert_array_equal(back.scores(x), net.scores(x))
    assert back.provenance["import"]["format"] == "nir"
    with pytest.raises(ImportFormatError, match="layer 0 carries no π² K .* give K per layer with --k"):
        import_nir(tmp_path / "plain.nir")


def test_caller_k_must_agree_with_the_graph():
    graph = network_to_nir(mlp())
    assert network_from_nir(graph, [3, 4]).k == (3, 4)
    with pytest.raises(ImportFormatError, match="layer 1 has K = 4 in the graph but --k says 9"):
        network_from_nir(graph, [3, 9])
    with pytest.raises(ImportFormatError, match="the graph has 2 layers but --k gives 1"):
        network_from_nir(graph, [3])


def ours(edit):
    graph = network_to_nir(mlp())
    edit(graph)
    return graph


def _replace(name, node):
    return lambda g: g.nodes.__setitem__(name, node)


REFUSALS = {
    "lif neuron": (lambda: plain_chain(nir.Linear(weight=np.ones((8, 12))),
                                       nir.LIF(tau=np.ones(8), r=np.ones(8), v_leak=np.zeros(8),
                                               v_threshold=np.ones(8), v_reset=np.zeros(8))),
                   r"node 'n1' \(LIF\) has no π² mapping"),
    "biased affine": (lambda: plain_chain(nir.Affine(weight=np.ones((8, 12)), bias=np.ones(8))),
                      r"node 'n0' \(Affine\) has a non-zero bias"),
    "foreign scale": (lambda: plain_chain(nir.Linear(weight=np.ones((8, 12))), nir.Scale(scale=np.ones(8))),
                      r"node 'n1' \(Scale\) has no π² mapping"),
    "no layers": (lambda: nir.NIRGraph(nodes={"in": nir.Input(np.array([3])), "out": nir.Output(np.array([3]))},
                                       edges=[("in", "out")]), "has no Linear layers"),
    # nir's own type check would refuse the next two; a graph read with type_check=False reaches us as is
    "3-D weight": (lambda: plain_chain(nir.Linear(weight=np.ones((2, 8, 12))), type_check=False),
                   r"node 'n0' weight must be a finite 2-D"),
    "chain mismatch": (lambda: plain_chain(nir.Linear(weight=np.ones((8, 12))), nir.Linear(weight=np.ones((5, 7))),
                                           type_check=False),
                       "layer 1 Linear takes 7 inputs but receives 8"),
    "branch": (lambda: ours(lambda g: (g.nodes.__setitem__("tap", nir.Output(np.array([8]))),
                                       g.edges.append(("layer0.neuron", "tap")))),
               "needs exactly one Input and one Output"),
    "fork": (lambda: ours(lambda g: g.edges.append(("layer0.synapse", "layer1.synapse"))),
             r"node 'layer0.synapse' has 2 successors"),
    "stray": (lambda: ours(lambda g: g.nodes.__setitem__("spare", nir.Linear(weight=np.ones((2, 2))))),
              "node 'spare' is not on the Input → Output chain"),
    "neuron without k": (lambda: ours(_replace("layer1.neuron", nir.Scale(scale=np.full(5, -10.0)))),
                         r"node 'layer1.neuron' \(Scale\) lacks metadata pi2_k"),
    "linear without neuron": (lambda: ours(lambda g: (g.edges.remove(("layer0.synapse", "layer0.neuron")),
                                                      g.edges.remove(("layer0.neuron", "layer1.synapse")),
                                                      g.nodes.pop("layer0.neuron"),
                                                      g.edges.insert(0, ("layer0.synapse", "layer1.synapse")))),
                              r"layers \[0\] have a Linear node but no π² neuron"),
    "positive scale": (lambda: ours(lambda g: setattr(g.nodes["layer0.neuron"], "scale", np.full(8, 5.0))),
                       r"node 'layer0.neuron' \(Scale\) must scale every neuron by the same −s < 0"),
    "missing t0": (lambda: ours(lambda g: g.metadata.pop("pi2_t0")), "graph metadata lacks pi2_t0"),
    "unknown metadata": (lambda: ours(lambda g: g.metadata.__setitem__("pi2_tau", 1.0)),
                         r"unknown graph metadata \['pi2_tau'\]"),
    "convention": (lambda: ours(lambda g: g.metadata.__setitem__("pi2_convention", 2)), "this pi2 reads convention 1"),
    "neuron kind": (lambda: ours(lambda g: g.metadata.__setitem__("pi2_neuron", "temp")),
                    "pi2_neuron = 'temp'; expected 'pi2' .* or 'temp' with pi2_gamma"),
    "k type": (lambda: ours(lambda g: g.nodes["layer0.neuron"].metadata.__setitem__("pi2_k", 2.5)),
               "metadata layer0.neuron.pi2_k = 2.5; expected a int"),
    "k range": (lambda: ours(lambda g: g.nodes["layer0.neuron"].metadata.__setitem__("pi2_k", 25)),
                "layer 0 K = 25; expected 1..24"),
    "bits": (lambda: ours(lambda g: g.metadata.__setitem__("pi2_bits", 0)), "pi2_bits = 0; expected 1..16"),
    "provenance": (lambda: ours(lambda g: g.metadata.__setitem__("pi2_provenance", "[1]")),
                   "pi2_provenance must be a JSON object"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_name_the_problem(case):
    build, match = REFUSALS[case]
    graph = build()
    with pytest.raises(ImportFormatError, match=match) as err:
        network_from_nir(graph, [1] * 8 if case == "lif neuron" else None)
    assert "\n" not in str(err.value)


def test_unreadable_files(tmp_path):
    (tmp_path / "junk.nir").write_bytes(b"not hdf5")
    with pytest.raises(ImportFormatError, match="not a NIR graph file nir can read") as err:
        import_nir(tmp_path / "junk.nir")
    assert "\n" not in str(err.value)
    with pytest.raises(ImportFormatError, match="no such NIR file"):
        import_nir(tmp_path / "missing.nir")


def test_unknown_node_type_in_file_is_refused(tmp_path):
    graph = plain_chain(nir.Linear(weight=np.ones((8, 12))),
                        nir.IF(r=np.ones(8), v_threshold=np.ones(8), v_reset=np.zeros(8)))
    nir.write(tmp_path / "if.nir", graph)
    with pytest.raises(ImportFormatError, match=r"node 'n1' \(IF\) has no π² mapping"):
        import_nir(tmp_path / "if.nir", k=[1])

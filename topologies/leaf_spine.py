"""A leaf-spine (two-tier Clos) fabric: every leaf switch linked to every spine, hosts on leaves.

    mn --custom topologies/leaf_spine.py --topo leafspine,1,2,2 --switch lxbr --controller none --test pingall

With two or more spines the fabric has loops: a Linux bridge then needs spanning tree
(``--switch lxbr,stp=1``, and Mininet waits for ports to forward) or broadcasts circulate forever.
`prefix=p2abcd` names every node ``p2abcd…`` so the testbed's `pi2 clean` can find them.
This file imports only Mininet: `mn` runs it with the system Python.
"""

from mininet.topo import Topo


class LeafSpineTopo(Topo):
    """`spines` spine switches ``sp<i>``, `leaves` leaf switches ``lf<j>``, each leaf linked to
    every spine, and `hosts_per_leaf` hosts ``h<j>x<k>`` on each leaf."""

    def build(self, spines=2, leaves=2, hosts_per_leaf=1, prefix=""):
        spines, leaves, hosts_per_leaf = int(spines), int(leaves), int(hosts_per_leaf)
        if spines < 1 or leaves < 1 or hosts_per_leaf < 0:
            raise ValueError(f"leafspine needs spines ≥ 1, leaves ≥ 1, hosts_per_leaf ≥ 0; "
                             f"got {spines}, {leaves}, {hosts_per_leaf}")
        # dpids: spines 1.., leaves after them (Mininet derives none from these names reliably).
        spine_names = [self.addSwitch(f"{prefix}sp{i}", dpid=f"{i + 1:016x}") for i in range(spines)]
        for j in range(leaves):
            leaf = self.addSwitch(f"{prefix}lf{j}", dpid=f"{spines + j + 1:016x}")
            for spine in spine_names:
                self.addLink(leaf, spine)
            for k in range(hosts_per_leaf):
                self.addLink(self.addHost(f"{prefix}h{j}x{k}"), leaf)


topos = {"leafspine": LeafSpineTopo}

"""Backends that build a FabricPlan in the kernel: plain namespaces (default) and Mininet.

`testbed.fabric.live.build_fabric(plan)` is the one entry point. Both backends make their links
their own way, share what follows (testbed.fabric.ports: delay trees, gates, carrier, CPUs) and
return the same handle (testbed.fabric.handle.LiveFabric: where to inject, which ports to read,
the gates' counters). Imports flow one way: live → backends → ports → handle.
"""

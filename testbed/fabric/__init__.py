"""Backends that build a FabricPlan in the kernel: plain namespaces (default) and Mininet.

`testbed.fabric.live.build_fabric(plan)` is the one entry point; both backends return the same
`LiveFabric` handle (where to inject, which ports to read, the gates' counters).
"""

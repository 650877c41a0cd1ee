"""Kernel side: namespaces, links, bridges, tc trees, eBPF, capability probe, cleanup (the only pyroute2 imports)."""

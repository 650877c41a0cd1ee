"""The π² model in numpy: encodings, π²_K layers, networks and network files (no torch, no kernel)."""

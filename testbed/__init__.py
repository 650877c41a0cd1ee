"""π² testbed: neural-network inference computed by a Linux packet fabric.

Data flow (one package per stage)::

    train ─► model (.npz network) ─► plan (FabricPlan JSON) ─┬─► sim     (predicted arrivals)
                                                             └─► kernel/fabric ─► traffic (inject, capture, decode)
    model ─► energy
"""

__version__ = "0.1.0"

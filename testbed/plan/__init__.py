"""FabricPlan: the single source of truth that both the simulator and the kernel builder execute."""

"""Event-level execution of a FabricPlan in-process: the kernel fabric's golden twin."""

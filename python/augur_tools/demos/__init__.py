"""The demos behind make demo, loop-demo, fleet-demo and soak."""

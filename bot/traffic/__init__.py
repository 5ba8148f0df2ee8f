"""Traffic backends: what actually moves users between stable and canary."""

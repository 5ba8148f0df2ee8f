"""Metrics sources: where canary and control numbers come from."""

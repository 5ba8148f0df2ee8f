"""Judging a canary against its control: query plans, thresholds, Mann-Whitney, score, decision.

Pure: no I/O."""

"""Slack transport: parse, ack, call the core in ``bot``, render. No logic of its own."""

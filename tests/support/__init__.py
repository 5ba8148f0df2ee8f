"""Helpers the tests use to start real services (redis-server, prometheus, sample apps)."""

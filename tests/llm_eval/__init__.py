"""Offline evaluation of the rollback diagnosis (run by hand; never collected by pytest)."""

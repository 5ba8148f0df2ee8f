"""Redis: every key and script, release records, audit, leases, locks. The only Redis client."""

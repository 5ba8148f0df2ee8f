"""Paging the on-call after an automatic rollback: PagerDuty (Events API v2) and Opsgenie.

``alert`` builds what is sent from the release record (pure), ``pagerduty`` and ``opsgenie`` send
it through each service's own Python client, and ``pager`` listens on the event bus and runs
every page beside the rollback, never on its path.
"""

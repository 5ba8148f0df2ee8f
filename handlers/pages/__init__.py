"""The release page, read-only, for people who do not live in Slack.

    GET /releases                              active releases and the latest finished ones
    GET /releases/{service}/{id}               one release (HTML)
    GET /releases/{service}/{id}/events        server-sent events: "changed" when it moves

A release page opens with a signed link (``?exp=…&mac=…``, made with ``SHIPWATCH_PAGE_SECRET``
and posted in the status message and the success announcement) or with an API token
(``Authorization: Bearer``, as for the CI API, limited to the token's services). The index
needs a token. Bad or expired links answer 403 with how to get a fresh one; an unknown release
answers 404.
"""

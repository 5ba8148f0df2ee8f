"""The CI API: a pipeline starts a release when its staging criteria are met, and follows it.

    POST /api/v1/rollouts                   start a release (exactly as /deploy does)
    GET  /api/v1/rollouts/{service}         the active release of a service, or its last one
    GET  /api/v1/releases?service=&limit=   the deployment record: a service's releases

All three take ``Authorization: Bearer <token>``. Tokens come from ``SHIPWATCH_API_TOKENS``, a
comma-separated list of entries::

    name:token[:service1|service2]

``name`` (letters, digits, ``.``, ``_``, ``-``) says who the caller is: a release started with
it is requested by ``"<requested_by> (via <name>)"``. ``token`` is the secret, at least 16
characters, without ``:``, ``,`` or white space (``openssl rand -hex 32`` makes a good one).
The optional third part limits the token to the services listed, separated by ``|``; without
it the token may start releases of every service. For example::

    SHIPWATCH_API_TOKENS="github:3f9c...e1:checkout|search,jenkins:a81b...07"

Only SHA-256 digests of the tokens are kept after parsing, and a presented token is compared
with every configured digest in constant time, so neither timing nor logs can give a token
away. The policy's own rules still apply to an API caller: locks, one active release per
service, and the service's ``deployers`` list (which names Slack users, so a service with such a
list refuses API releases with 403).

The POST body (unknown fields are refused)::

    {"service": "checkout", "version": "v2.4.1", "requested_by": "octocat",
     "changes": [{"title": "...", "pr": 812, "author": "octocat", "url": "https://..."}],
     "risk": "normal" | "high", "notes": "...", "stable": "v2.4.0", "request_id": "run-4711",
     "gates": {"ci_build": "passed", "tests": {"status": "passed", "url": "https://..."}}}

``risk``, ``notes``, ``stable``, ``request_id`` and ``gates`` are optional, as are a change's
``pr``, ``author`` and ``url``. ``gates`` reports the pre-release gates (bot.engine.gates: status
``passed``, ``failed`` or ``pending``, optionally with a link to the run); without it, the
gates the service requires are read from ``SHIPWATCH_GATES_URL`` as for /deploy. There is no
``force``: starting a release past gates that have not passed is an approver's decision, made
with ``/deploy ... --force``, never a pipeline's. A release started answers 201 with its
summary and ``status_url``; a ``request_id`` seen before (a CI retry) answers 200 with the
release it started, unchanged.

Answers are JSON. Errors are ``{"error": <what went wrong>, ...}``: 401 (no or unknown token,
with ``WWW-Authenticate: Bearer``), 403 (the token may not touch the service), 404 (unknown
service, with a suggestion; or no release yet), 409 (a release is active or the service is
locked: ``release`` and ``lock`` say which; or a required gate has not passed: ``gates``
lists ``required``, the ``results`` used and ``not_passed``, each gate with ``failed``,
``pending`` or ``missing``), 422 (an invalid request: ``fields`` lists each problem by its
path, e.g. ``changes[0].title`` or ``gates.tests.status``), 503 (Redis, the traffic backend
or the gates status URL failed; nothing was started, so the same request may be retried).

``GET /api/v1/releases?service=checkout&limit=20`` is the deployment record, newest first:
``{"service": ..., "count": n, "releases": [...]}``, each release with who started it, from
where, what it replaced, its plan, when it started and finished (ISO 8601 UTC and epoch
seconds), its outcome (``succeeded``, ``rolled_back`` or ``in_progress``) and why, its notes
and change list, its gates and whether (and by whom) they were forced, its approvals, and the
final checks and score. ``service`` is required; ``limit`` is 1 to 100 (default 20). Errors
as above: 401, 403 (the token may not read the service), 404 (unknown service), 422.
"""

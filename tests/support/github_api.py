"""A local stand-in for GitHub's REST API, as far as filing issues and starting workflows goes.

``bot.writing.tickets`` creates an incident issue with ``POST /repos/{owner}/{repo}/issues``. This
server answers that route the way api.github.com does, for the real aiohttp client:

    async with GitHubStandIn(token="ghp_test") as github:
        settings = GitHubTickets(repo="acme/checkout", api_url=github.api_url)
        ...
        [issue] = github.issues
        assert issue.labels == ["shipwatch", "rollback"]

It is strict where GitHub is and a lenient fake would hide a bug: a missing or wrong token is a
401 "Bad credentials", an ``Accept`` header without ``application/vnd.github+json`` a 415, a
body that is not a JSON object with a non-empty ``title`` (and, if given, a string ``body`` and
a list of string ``labels``) a 422 "Validation Failed". A created issue is a 201 carrying its
``number`` and ``html_url``. Every request is recorded before it is judged.

``POST /repos/{owner}/{repo}/dispatches`` (a repository_dispatch event, which starts the GitHub
Actions workflows that listen for its ``event_type``) is checked the same way: a body without a
string ``event_type`` of 1-100 characters, or with a ``client_payload`` that is not an object of
at most 10 top-level properties, is a 422; an accepted one is a 204 without a body, recorded in
``dispatches`` and handed to ``on_dispatch`` (a test's stand-in for the workflow run).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.standin import LocalServer

Json = dict[str, Any]

MEDIA_TYPE = "application/vnd.github+json"
DOCS = "https://docs.github.com/rest/issues/issues#create-an-issue"


@dataclass(frozen=True)
class GitHubRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass(frozen=True)
class Issue:
    owner: str
    repo: str
    number: int
    title: str
    body: str
    labels: list[str]
    html_url: str


class GitHubStandIn(LocalServer):
    """An aiohttp server on 127.0.0.1 (free port) that creates issues for one token."""

    def __init__(self, token: str, *, first_number: int = 1) -> None:
        super().__init__()
        self.token = token
        self.requests: list[GitHubRequest] = []
        self.issues: list[Issue] = []
        self._numbers = itertools.count(first_number)
        self._failures: deque[tuple[int, str]] = deque()
        self._raw: deque[tuple[int, str]] = deque()
        self.dispatches: list[Json] = []
        # What "runs the workflow" for each accepted dispatch, in its own task.
        self.on_dispatch: Callable[[Json], Coroutine[Any, Any, None]] | None = None
        self._runs: set[asyncio.Task[None]] = set()

    # -- serving ---------------------------------------------------------------------------

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("POST", "/repos/{owner}/{repo}/issues", self._create_issue)
        router.add_route("POST", "/repos/{owner}/{repo}/dispatches", self._dispatch)
        router.add_route("*", "/{tail:.*}", self._not_found)

    @property
    def api_url(self) -> str:
        """The ``api_url`` of a ``GitHubTickets`` policy (no trailing slash)."""
        return self.base_url

    # -- scripting -------------------------------------------------------------------------

    def fail_next(self, status: int, message: str = "Server Error", *, count: int = 1) -> None:
        """Answer the next ``count`` well-formed issue requests with ``status``."""
        self._failures.extend((status, message) for _ in range(count))

    def answer_raw_next(self, status: int, text: str) -> None:
        """Answer the next well-formed issue request with exactly ``text`` (a broken proxy
        in front of GitHub Enterprise, say); no issue is recorded."""
        self._raw.append((status, text))

    # -- handlers --------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> GitHubRequest:
        recorded = GitHubRequest(
            method=request.method,
            path=request.path,
            headers={name.lower(): value for name, value in request.headers.items()},
            body=await request.read(),
        )
        self.requests.append(recorded)
        return recorded

    async def _not_found(self, request: web.Request) -> web.Response:
        await self._record(request)
        return _error(404, "Not Found")

    def _refused(self, recorded: GitHubRequest) -> web.Response | None:
        """The answer to a request without the token or GitHub's media type (None: neither)."""
        scheme, _, credential = recorded.headers.get("authorization", "").partition(" ")
        # GitHub takes both schemes for a token; anything else is anonymous, and anonymous
        # callers may not create issues or dispatch events.
        if scheme.lower() not in ("bearer", "token") or credential.strip() != self.token:
            return _error(401, "Bad credentials")
        accepted = [
            part.split(";")[0].strip() for part in recorded.headers.get("accept", "").split(",")
        ]
        if MEDIA_TYPE not in accepted:
            return _error(415, f"Unsupported 'Accept' header: use {MEDIA_TYPE}")
        return None

    async def _dispatch(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        if (refused := self._refused(recorded)) is not None:
            return refused
        try:
            body = json.loads(recorded.body)
        except ValueError:
            return _error(400, "Problems parsing JSON")
        event_type = body.get("event_type") if isinstance(body, dict) else None
        payload = body.get("client_payload", {}) if isinstance(body, dict) else None
        if not isinstance(event_type, str) or not 1 <= len(event_type) <= 100:
            return _error(422, "Validation Failed", errors=[_invalid("event_type")])
        if not isinstance(payload, dict) or len(payload) > 10:
            return _error(422, "Validation Failed", errors=[_invalid("client_payload")])
        if self._failures:
            status, message = self._failures.popleft()
            return _error(status, message)
        self.dispatches.append(body)
        if self.on_dispatch is not None:
            run = asyncio.create_task(self.on_dispatch(body))
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)
        return web.Response(status=204)

    async def _create_issue(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        if (refused := self._refused(recorded)) is not None:
            return refused
        try:
            body = json.loads(recorded.body)
        except ValueError:
            return _error(400, "Problems parsing JSON")
        problems = _problems(body)
        if problems:
            return _error(422, "Validation Failed", errors=problems)
        if self._raw:
            status, text = self._raw.popleft()
            return web.Response(status=status, text=text, content_type="application/json")
        if self._failures:
            status, message = self._failures.popleft()
            return _error(status, message)
        owner, repo = request.match_info["owner"], request.match_info["repo"]
        number = next(self._numbers)
        issue = Issue(
            owner=owner,
            repo=repo,
            number=number,
            title=body["title"],
            body=body.get("body") or "",
            labels=list(body.get("labels") or []),
            html_url=f"https://github.com/{owner}/{repo}/issues/{number}",
        )
        self.issues.append(issue)
        return web.json_response(
            {
                "id": 1_000_000 + number,
                "number": number,
                "state": "open",
                "title": issue.title,
                "body": issue.body,
                "labels": [{"name": name} for name in issue.labels],
                "html_url": issue.html_url,
                "url": f"{self.api_url}/repos/{owner}/{repo}/issues/{number}",
            },
            status=201,
        )


def _problems(body: object) -> list[Json]:
    """What GitHub's validation would say about an issue body, as its ``errors`` list."""
    if not isinstance(body, dict):
        return [{"resource": "Issue", "code": "invalid", "field": "body"}]
    problems: list[Json] = []
    title = body.get("title")
    if not isinstance(title, str) or not title.strip():
        problems.append({"resource": "Issue", "code": "missing_field", "field": "title"})
    if "body" in body and body["body"] is not None and not isinstance(body["body"], str):
        problems.append({"resource": "Issue", "code": "invalid", "field": "body"})
    labels = body.get("labels")
    if labels is not None and not (
        isinstance(labels, list) and all(isinstance(label, str) for label in labels)
    ):
        problems.append({"resource": "Issue", "code": "invalid", "field": "labels"})
    return problems


def _invalid(field: str) -> Json:
    return {"resource": "RepositoryDispatch", "code": "invalid", "field": field}


def _error(status: int, message: str, *, errors: list[Json] | None = None) -> web.Response:
    body: Json = {"message": message, "documentation_url": DOCS, "status": str(status)}
    if errors:
        body["errors"] = errors
    return web.json_response(body, status=status)

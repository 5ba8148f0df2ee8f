"""Pre-release gates: the checks (CI build, tests, security scan, compliance) that must have
passed before a release of a service may start.

A service lists the gates it requires in the policy (``gates: [ci_build, tests]``). Their
results come from the caller, when a pipeline starts the release through the API (the body's
``gates``), or else from the gates status URL, ``SHIPWATCH_GATES_URL``: a template in which
``{service}`` and ``{version}`` are replaced (URL-encoded) before a GET such as::

    GET https://ci.example.com/gates/{service}/{version}
    Accept: application/json
    Authorization: Bearer $SHIPWATCH_GATES_TOKEN      (only when the token is set)

It must answer 2xx with a JSON object whose ``gates`` maps each gate's name to its status,
``passed``, ``failed`` or ``pending``, or to an object with that status and a link to the run::

    {"gates": {"ci_build": "passed",
               "tests": {"status": "failed", "url": "https://ci.example.com/runs/4711"}}}

Other keys are ignored, and so are gates the service does not require. A required gate that
the answer leaves out is ``missing``. The API body's ``gates`` has the same shape.

A release starts only when every required gate passed. Anything else refuses it and names the
gates, changing nothing: a gate failed, pending or missing (``GatesNotPassed``), no results
to be had because no status URL is configured (``GatesNotPassed`` with a hint to configure
one), or a status URL that is down, times out, answers a non-2xx or anything but the format
above (``GatesUnavailable``, a failing dependency: never read as a pass). An approver of the
service may start it anyway with ``--force``; the release then records who forced it past which
gates (``Release.gates``), and says so on its status message.

Nothing here decides who may force: ``bot.engine.service`` does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import quote

import aiohttp
from pydantic import (
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationError,
)

from bot.errors import DependencyError, Failure, UserError
from bot.redact import redact_url
from bot.release.gates import GateResult, GateStatus, ReportedGate
from bot.release.rollout import GateRecord

log = logging.getLogger(__name__)

# More than any honest answer needs; a status URL that streams a build log is cut off here.
MAX_ANSWER_BYTES = 256 * 1024
FORCE_HINT = "an approver of the service can override with --force"
CONFIGURE_HINT = (
    "set SHIPWATCH_GATES_URL to your CI's gate status endpoint (e.g. "
    "https://ci.example.com/gates/{service}/{version}), or start the release through the API "
    "with the results in `gates`"
)


class _StatusAnswer(BaseModel):
    # The status URL belongs to another system: its extra keys and the names of gates nobody
    # requires are its business. The statuses of what it reports are not open to guessing.
    model_config = ConfigDict(extra="ignore")

    gates: dict[Annotated[str, StringConstraints(min_length=1, max_length=100)], ReportedGate]


class Source(StrEnum):
    REQUEST = "request"  # the API caller reported them
    STATUS_URL = "status_url"  # read from SHIPWATCH_GATES_URL
    NONE = "none"  # nowhere to read them from


@dataclass(frozen=True)
class GateVerdict:
    """The required gates against what was reported; ``problem`` says why nothing was."""

    required: tuple[str, ...]
    results: Mapping[str, GateResult] = field(default_factory=dict)
    source: Source = Source.NONE
    problem: str = ""

    def not_passed(self) -> dict[str, str]:
        """Each required gate that has not passed, with why: failed, pending, missing, unknown."""
        if self.problem:
            return dict.fromkeys(self.required, "unknown")
        out: dict[str, str] = {}
        for gate in self.required:
            result = self.results.get(gate)
            if result is None:
                out[gate] = "missing"
            elif result.status is not GateStatus.PASSED:
                out[gate] = result.status.value
        return out

    @property
    def passed(self) -> bool:
        return not self.not_passed()

    def summary(self) -> str:
        """One line for logs and the audit: 'security_scan failed, tests pending'."""
        if self.problem:
            return f"gates unknown: {self.problem}"
        return ", ".join(f"{g} {why}" for g, why in self.not_passed().items()) or "gates passed"

    def record(self, forced_by: str = "") -> GateRecord:
        """What the release keeps; ``forced_by`` only when something was actually overridden."""
        overridden = self.not_passed()
        return GateRecord(
            required=list(self.required),
            results={name: r.status.value for name, r in self.results.items()},
            links={name: r.url for name, r in self.results.items() if r.url},
            source=self.source.value,
            problem=self.problem,
            forced_by=forced_by if overridden else "",
            overridden=overridden if forced_by else {},
        )

    def as_json(self) -> dict[str, Any]:
        """The machine-readable form (API answers, audit detail)."""
        return {
            "required": list(self.required),
            "results": {
                name: {"status": r.status.value, **({"url": r.url} if r.url else {})}
                for name, r in self.results.items()
            },
            "not_passed": self.not_passed(),
            "source": self.source.value,
            "problem": self.problem,
        }

    def refusal(self, service: str, version: str) -> GatesNotPassed | GatesUnavailable:
        """The error that refuses this release, naming every gate that stands in the way."""
        what = f"{service} {version}"
        if self.source is Source.STATUS_URL and self.problem:
            return GatesUnavailable(
                f"cannot check the gates of {what}: {self.problem}. Nothing was started; try "
                f"again once it answers, or {FORCE_HINT}",
                self,
            )
        if self.problem:
            return GatesNotPassed(
                f"`{service}` requires the gates {', '.join(self.required)} and shipwatch has "
                f"no results for {version}: {self.problem}",
                self,
                hint=f"{CONFIGURE_HINT}; {FORCE_HINT}",
            )
        blocking = self.not_passed()
        if len(blocking) == 1:
            [(gate, why)] = blocking.items()
            message = f"gate `{gate}` {why} for {what}{self._link(gate)}"
        else:
            named = [f"`{g}` {why}{self._link(g)}" for g, why in blocking.items()]
            message = f"gates not passed for {what}: {', '.join(named)}"
        todo = []
        if "failed" in blocking.values():
            todo.append("fix what failed and run it again")
        if "pending" in blocking.values():
            todo.append("wait for what is pending")
        if "missing" in blocking.values():
            todo.append(f"report every required gate ({', '.join(self.required)})")
        return GatesNotPassed(message, self, hint=f"{'; '.join(todo)}; {FORCE_HINT}")

    def _link(self, gate: str) -> str:
        result = self.results.get(gate)
        return f" ({result.url})" if result is not None and result.url else ""


class GatesNotPassed(UserError):
    """A required gate failed, is pending or missing, or no results can be had at all."""

    failure = Failure.GATES

    def __init__(self, message: str, verdict: GateVerdict, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.verdict = verdict


class GatesUnavailable(DependencyError):
    """The gates status URL failed: the gates are unknown, which is never a pass."""

    def __init__(self, message: str, verdict: GateVerdict) -> None:
        super().__init__(message)
        self.verdict = verdict


def fill_url(template: str, service: str, version: str) -> str:
    """The template with its placeholders filled; str.format would trip on other braces."""
    return template.replace("{service}", quote(service, safe="")).replace(
        "{version}", quote(version, safe="")
    )


def check_template(template: str) -> str:
    """The template if it is usable; UserError (at start-up) saying how to fix it if not."""
    if not template.startswith(("http://", "https://")) or any(c.isspace() for c in template):
        raise UserError(
            "SHIPWATCH_GATES_URL must be an http:// or https:// URL without white space",
            hint="e.g. https://ci.example.com/gates/{service}/{version}",
        )
    if "{version}" not in template:
        # Without the version, every release of a service would be judged by one answer.
        raise UserError(
            "SHIPWATCH_GATES_URL must contain {version} (and usually {service})",
            hint="e.g. https://ci.example.com/gates/{service}/{version}",
        )
    return template


class GateChecker:
    """Checks a release's required gates against reported results or the status URL."""

    def __init__(
        self,
        url_template: str | None = None,
        *,
        timeout: float = 5.0,
        token: str | None = None,
    ) -> None:
        self.template = check_template(url_template) if url_template else None
        self.timeout = timeout
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    async def check(
        self,
        service: str,
        version: str,
        required: Sequence[str],
        reported: Mapping[str, GateResult] | None = None,
    ) -> GateVerdict:
        """The verdict; a status URL that fails gives a verdict with ``problem``, not a raise."""
        needed = tuple(required)
        if not needed:
            return GateVerdict(required=(), results=dict(reported or {}))
        if reported is not None:
            return GateVerdict(needed, dict(reported), Source.REQUEST)
        if self.template is None:
            return GateVerdict(needed, problem="SHIPWATCH_GATES_URL is not set")
        url = fill_url(self.template, service, version)
        try:
            results = await self._fetch(url)
        except _Unreadable as exc:
            problem = f"the gates status URL {redact_url(url)} {exc}"
            log.error("gates of %s %s unknown: %s", service, version, problem)
            return GateVerdict(needed, source=Source.STATUS_URL, problem=problem)
        return GateVerdict(needed, results, Source.STATUS_URL)

    async def _fetch(self, url: str) -> dict[str, GateResult]:
        headers = {"Accept": "application/json", "User-Agent": "shipwatch"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with self._client().get(
                url,
                headers=headers,
                # Not followed: a redirect to another host would carry the token along, and
                # the configured URL should be the final one anyway.
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                if not 200 <= resp.status < 300:
                    raise _Unreadable(f"answered HTTP {resp.status}")
                body = await resp.content.read(MAX_ANSWER_BYTES + 1)
        except TimeoutError as exc:
            raise _Unreadable(f"did not answer within {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise _Unreadable(f"is unreachable ({type(exc).__name__}: {exc})") from exc
        if len(body) > MAX_ANSWER_BYTES:
            raise _Unreadable(f"answered more than {MAX_ANSWER_BYTES // 1024} KiB")
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise _Unreadable(f"did not answer JSON ({exc})") from exc
        try:
            answer = _StatusAnswer.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "(answer)"
            raise _Unreadable(
                f"answered JSON that is not a gates report ({where}: {first['msg']}); expected "
                '{"gates": {"<gate>": "passed" | "failed" | "pending"}}'
            ) from exc
        return dict(answer.gates)

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop; most processes never check a gate.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Unreadable(Exception):
    """Why the status URL's answer could not be read (completes "the gates status URL ...")."""


__all__ = [
    "GateChecker",
    "GateVerdict",
    "GatesNotPassed",
    "GatesUnavailable",
    "Source",
    "fill_url",
]

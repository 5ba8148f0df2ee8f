"""The daily digest's policy and its clock: when a channel's standup post is due (pure).

A release whose steps last hours or days gets one post per channel per local day, at the
time the policy names, in the team's own time zone. "Due" is decided on the local wall clock,
so a DST change moves nothing: 09:30 stays 09:30 in Berlin in winter and in summer.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, field_validator

from bot.release.durations import Seconds

_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


class DigestSettings(BaseModel):
    """``digest:`` of a service: post a daily standup of its long releases to its channel."""

    model_config = ConfigDict(extra="forbid")

    at: str  # local time of day, "HH:MM" (24 h)
    timezone: str = "UTC"  # an IANA zone name, e.g. Europe/Berlin
    # Releases whose current or next step holds at least this long are listed (paused ones and
    # those waiting for approval always are): a 15-minute ladder needs no standup.
    min_hold: Seconds = 7200.0

    @field_validator("at")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value.strip()):
            raise ValueError(
                f'{value!r} is not a time of day: write it as HH:MM in 24 h, quoted, e.g. "09:30"'
            )
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"{value!r} is not an IANA time zone: write a name like Europe/Berlin, "
                "America/New_York or UTC"
            ) from exc
        return value

    @property
    def time_of_day(self) -> time:
        hours, minutes = self.at.split(":")
        return time(int(hours), int(minutes))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def digest_due(now: float, last_posted: date | None, at: time, zone: ZoneInfo) -> date | None:
    """The local date a digest is due for at ``now`` (seconds since the epoch), or None.

    Due once the local wall clock has reached ``at`` on a day not yet posted. Comparing wall
    clock times keeps DST harmless: a time skipped by the spring change is reached at the first
    minute after the gap, and a time repeated in autumn is posted for once, since the date is
    then already posted. A bot that was down at ``at`` posts when it comes back, the same day.
    """
    local = datetime.fromtimestamp(now, zone)
    today = local.date()
    if last_posted is not None and last_posted >= today:
        return None
    if local.time().replace(tzinfo=None) < at:
        return None
    return today

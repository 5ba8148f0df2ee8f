"""The failure table: every kind has a row, every error class its kind, and a bug a reference."""

from __future__ import annotations

import logging

import pytest

from bot.engine.gates import GatesNotPassed, GatesUnavailable, GateVerdict
from bot.errors import (
    CommandError,
    Failure,
    LockedError,
    LostRaceError,
    PermissionDenied,
    PolicyError,
    ShipwatchError,
    StoreError,
    TrafficError,
    UnknownServiceError,
    UserError,
    failure_of,
)
from bot.render.errors import SHOWN, chat_error, report
from bot.render.terminal import render_text
from bot.writing.prompts import UnknownPromptError

log = logging.getLogger("tests.errors")


def test_every_kind_of_failure_has_a_row() -> None:
    assert set(SHOWN) == set(Failure)


@pytest.mark.parametrize(
    ("exc", "kind", "status"),
    [
        (CommandError("empty command", usage="/rollout help"), Failure.USAGE, 422),
        (PermissionDenied("deploy", "checkout", ["U1"]), Failure.PERMISSION, 403),
        (UnknownServiceError("chekout", "checkout", ["checkout"]), Failure.UNKNOWN_SERVICE, 404),
        (GatesNotPassed("tests failed", GateVerdict(required=("tests",))), Failure.GATES, 409),
        (PolicyError("x.yaml", []), Failure.INVALID, 422),
        (UserError("`` is not a version"), Failure.INVALID, 422),
        (LockedError("checkout is locked"), Failure.CONFLICT, 409),
        (LostRaceError("someone else won"), Failure.CONFLICT, 409),
        (StoreError("Redis is unavailable"), Failure.DEPENDENCY, 503),
        (TrafficError("the backend refused"), Failure.DEPENDENCY, 503),
        (GatesUnavailable("timed out", GateVerdict(("tests",))), Failure.DEPENDENCY, 503),
        # Not raised on purpose: a missing template, a plain exception, a bare base error.
        (UnknownPromptError("no template `x`"), Failure.BUG, 500),
        (ShipwatchError("raised bare"), Failure.BUG, 500),
        (KeyError("release"), Failure.BUG, 500),
    ],
)
def test_each_error_class_has_its_kind_and_row(
    exc: BaseException, kind: Failure, status: int
) -> None:
    assert failure_of(exc) is kind
    assert SHOWN[kind].http_status == status


def test_a_bug_is_logged_with_its_traceback_and_answered_with_the_reference(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise KeyError("release")
    except KeyError as exc:
        with caplog.at_level(logging.INFO, logger=log.name):
            failed = report(exc, what="button shipwatch_advance by U1", log=log)
        message = chat_error(exc, failed)
    assert failed.kind is Failure.BUG and len(failed.ref) == 8
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert failed.ref in record.getMessage()
    text, _ = render_text(message)
    assert failed.ref in text and "nothing was changed" in text
    assert "KeyError" not in text  # no traceback or internals for the user


def test_a_user_mistake_is_logged_quietly_and_shown_with_its_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exc = CommandError("`deploy` needs a service", usage="/deploy <service> <version>")
    with caplog.at_level(logging.INFO, logger=log.name):
        failed = report(exc, what="deploy", log=log)
    (record,) = caplog.records
    assert record.levelno == logging.INFO and record.exc_info is None
    text, _ = render_text(chat_error(exc, failed))
    assert text.startswith(":warning: `deploy` needs a service")
    assert "Usage: `/deploy <service> <version>`" in text

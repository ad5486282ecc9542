"""The worker's per-delivery log line: key=value fields, no secret, no body, no address, and
not even built when INFO is off."""

from __future__ import annotations

import logging
import shlex
import sys
from datetime import datetime
from unittest.mock import MagicMock

import pytest
from cryptography.fernet import Fernet

from postyard.cli import LineFormatter
from postyard.config import Settings
from postyard.delivery import worker as worker_module
from postyard.delivery.outbox import Claimed, Outcome
from postyard.delivery.policy import Status
from postyard.delivery.worker import Attempt, Release, Worker, outcome_line, release_line
from postyard.metrics import Metrics

NOW = datetime(2026, 1, 1, 12, 0, 0)


def claimed(**fields: object) -> Claimed:
    values: dict[str, object] = {
        "id": 42,
        "workspace_id": 7,
        "campaign_type": "newsletter",
        "to_address": "reader@example.com",
        "from_address": "news@acme.example",
        "reply_to": None,
        "subject": "Secret plans",
        "text_body": "the body, which must never be logged",
        "html_body": None,
        "headers": None,
        "message_id": "<abc@acme.example>",
        "attempts": 2,
        "expires_at": NOW,
    }
    values.update(fields)
    return Claimed(**values)  # type: ignore[arg-type]


def parse(line: str) -> dict[str, str]:
    """Split a logfmt line into its fields."""
    return dict(part.split("=", 1) for part in shlex.split(line))


def test_a_sent_delivery_is_one_line_of_fields() -> None:
    outcome = Outcome(
        42,
        Status.SENT,
        NOW,
        smtp_server_id=3,
        route_via="type",
        smtp_response="250 2.0.0 Ok: queued as 4ABC",
        sent_at=NOW,
    )
    line = outcome_line(Attempt(claimed(), outcome, server="3"))
    assert "\n" not in line
    assert parse(line) == {
        "event": "delivery",
        "workspace": "7",
        "delivery": "42",
        "campaign_type": "newsletter",
        "server": "3",
        "via": "type",
        "status": "sent",
        "reply_code": "250",
        "attempts": "2",
        "detail": "250 2.0.0 Ok: queued as 4ABC",
    }
    for private in ("reader@example.com", "Secret plans", "the body", "news@acme.example"):
        assert private not in line


def test_a_failure_keeps_the_reason_but_not_the_address_and_cannot_forge_fields() -> None:
    outcome = Outcome(
        42,
        Status.FAILED,
        NOW,
        smtp_server_id=3,
        route_via="fallback",
        smtp_response="550 5.1.1 <reader@example.com>: no such user",
        last_error='550 5.1.1 <reader@example.com>: no such user\nstatus=sent "x"',
    )
    line = outcome_line(Attempt(claimed(), outcome, server="3"))
    assert "\n" not in line
    fields = parse(line)
    assert fields["status"] == "failed"
    assert fields["reply_code"] == "550"
    assert "reader@example.com" not in line
    assert fields["detail"].startswith("550 5.1.1 <<address>>: no such user")


def test_a_connection_failure_has_no_reply_code() -> None:
    outcome = Outcome(
        42, Status.DEFERRED, NOW, smtp_server_id=3, last_error="cannot connect to x: refused"
    )
    fields = parse(outcome_line(Attempt(claimed(), outcome, server="3")))
    assert fields["reply_code"] == "-"
    assert fields["via"] == "-"
    assert fields["status"] == "deferred"


def test_a_release_says_whether_the_transaction_had_begun() -> None:
    assert parse(release_line(Release(claimed(), started=False))) == {
        "event": "delivery",
        "workspace": "7",
        "delivery": "42",
        "campaign_type": "newsletter",
        "status": "released",
        "in_transaction": "no",
        "attempts": "1",
    }
    assert parse(release_line(Release(claimed(), started=True)))["attempts"] == "2"


@pytest.fixture
def offline_worker(monkeypatch: pytest.MonkeyPatch) -> Worker:
    """A worker whose database is a stand-in: `_record` runs without I/O."""
    monkeypatch.setattr(worker_module.outbox, "record", lambda *_: None)
    settings = Settings(database_url="sqlite://", secret_key=Fernet.generate_key().decode())
    return Worker(MagicMock(), settings, metrics=Metrics())


def test_the_line_is_logged_at_info(
    offline_worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    outcome = Outcome(42, Status.SENT, NOW, smtp_server_id=3, smtp_response="250 ok")
    with caplog.at_level(logging.INFO, logger="postyard.delivery.worker"):
        offline_worker._record([Attempt(claimed(), outcome, server="3")])
    assert [r.getMessage() for r in caplog.records] == [
        outcome_line(Attempt(claimed(), outcome, server="3"))
    ]
    counted = offline_worker.metrics.deliveries.labels("sent", "3", "newsletter")
    assert counted._value.get() == 1


def test_the_line_is_not_built_when_info_is_off(
    offline_worker: Worker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(_: object) -> str:
        raise AssertionError("built a log line nobody reads")

    monkeypatch.setattr(worker_module, "outcome_line", explode)
    outcome = Outcome(42, Status.SENT, NOW, smtp_server_id=3, smtp_response="250 ok")
    with caplog.at_level(logging.WARNING, logger="postyard.delivery.worker"):
        offline_worker._record([Attempt(claimed(), outcome, server="3")])
    assert caplog.records == []


def test_a_batch_s_outcomes_are_one_record_with_a_line_each(
    offline_worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    sent = Attempt(claimed(), Outcome(42, Status.SENT, NOW, smtp_response="250 ok"))
    deferred = Attempt(
        claimed(id=43), Outcome(43, Status.DEFERRED, NOW, last_error="451 try later")
    )
    handed_back = Release(claimed(id=44), started=False)
    with caplog.at_level(logging.INFO, logger="postyard.delivery.worker"):
        offline_worker._record([sent, deferred], [handed_back])
    [record] = caplog.records
    assert record.getMessage().split("\n") == [
        outcome_line(sent),
        outcome_line(deferred),
        release_line(handed_back),
    ]


def test_the_command_line_heads_every_line_of_a_record() -> None:
    formatter = LineFormatter("%(levelname)s %(name)s: %(message)s")
    batch = logging.LogRecord(
        "postyard.delivery.worker", logging.INFO, __file__, 1, "%s", ("a=1\nb=2",), None
    )
    assert formatter.format(batch) == (
        "INFO postyard.delivery.worker: a=1\nINFO postyard.delivery.worker: b=2"
    )
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord(
            "postyard", logging.ERROR, __file__, 1, "two\nlines", (), sys.exc_info()
        )
    formatted = formatter.format(failed)
    assert formatted.startswith("ERROR postyard: two\nlines\nTraceback")  # a traceback as is

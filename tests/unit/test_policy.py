"""What an SMTP reply means for a delivery, and when it is tried again (DESIGN §5)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest

from postyard.delivery.policy import (
    CLAIMABLE,
    Reply,
    RetryPolicy,
    Status,
    after_failure,
    is_hard_bounce,
    is_permanent,
)

NOW = datetime(2024, 5, 1, 12, 0, 0)
POLICY = RetryPolicy(base_seconds=60.0, max_seconds=3600.0)


def nominal(policy: RetryPolicy, attempts: int) -> float:
    """The delay before jitter, as DESIGN §5 describes it: exponential, capped."""
    return min(policy.base_seconds * 2 ** max(attempts - 1, 0), policy.max_seconds)


# --- Classifying replies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply(421, "4.3.2 Service shutting down"),
        Reply(450, "4.2.1 Mailbox busy"),
        Reply(451, "4.7.1 Greylisted, try again later"),
        Reply(452, "4.5.3 Too many recipients"),
        Reply(None, "connection to smtp-1 lost: timed out"),
        Reply(None, "connection refused"),
    ],
    ids=str,
)
def test_4xx_and_replies_without_a_code_are_temporary(reply: Reply) -> None:
    assert not is_permanent(reply)
    assert not is_hard_bounce(reply)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(500, "5.5.1 Command unrecognized"),
        Reply(550, "5.1.1 User unknown"),
        Reply(552, "5.3.4 Message too big"),
        Reply(554, "5.7.1 Rejected by policy"),
        Reply(554, "Transaction failed"),
    ],
    ids=str,
)
def test_5xx_replies_are_permanent(reply: Reply) -> None:
    assert is_permanent(reply)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(550, "5.1.1 <nobody@example.com>: Recipient address rejected"),
        Reply(553, "5.1.3 Bad destination mailbox address syntax"),
        Reply(550, "5.1.10 Recipient address rejected: null MX"),
        Reply(551, "  5.1.6 User has moved"),
    ],
    ids=str,
)
def test_5_1_x_replies_are_hard_bounces(reply: Reply) -> None:
    assert is_hard_bounce(reply)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(550, "5.7.1 Message rejected as spam"),
        Reply(552, "5.2.2 Mailbox full"),
        Reply(550, "Requested action not taken: mailbox unavailable"),
        Reply(450, "4.1.1 Recipient address rejected: try later"),
        Reply(None, "5.1.1 looks like an enhanced code but no reply code came"),
    ],
    ids=str,
)
def test_replies_other_than_5xx_with_5_1_x_are_not_hard_bounces(reply: Reply) -> None:
    assert not is_hard_bounce(reply)


@pytest.mark.parametrize(
    ("text", "enhanced"),
    [
        ("5.1.1 User unknown", (5, 1, 1)),
        ("4.7.0 Try again later", (4, 7, 0)),
        ("2.0.0 Ok: queued as ABC", (2, 0, 0)),
        ("  5.7.1 leading blanks are skipped", (5, 7, 1)),
        ("5.1.10 three-digit detail", (5, 1, 10)),
        ("5.123.456 widest form", (5, 123, 456)),
        ("User unknown", None),
        ("", None),
        ("5.1 missing detail", None),
        ("3.1.1 class 3 does not exist", None),
        ("5.1.1234 detail too long", None),
        ("User unknown 5.1.1", None),
    ],
)
def test_enhanced_status_code_is_parsed_from_the_start_of_the_text(
    text: str, enhanced: tuple[int, int, int] | None
) -> None:
    assert Reply(550, text).enhanced == enhanced


def test_reply_renders_with_its_code_or_just_its_text() -> None:
    assert str(Reply(550, "5.1.1 User unknown")) == "550 5.1.1 User unknown"
    assert str(Reply(None, "connection refused")) == "connection refused"


def test_queued_and_deferred_are_the_claimable_states() -> None:
    assert set(CLAIMABLE) == {Status.QUEUED, Status.DEFERRED}


# --- Backoff ------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [1, 2, 3, 4, 5, 6])
def test_delay_doubles_with_each_attempt_until_the_cap(attempts: int) -> None:
    # Equal seeds draw equal jitter, so the ratio between two delays is the nominal one.
    first = POLICY.delay(1, random.Random(42))
    later = POLICY.delay(attempts, random.Random(42))
    assert later / first == pytest.approx(2 ** (attempts - 1))


def test_delay_is_capped_at_max_seconds() -> None:
    policy = RetryPolicy(base_seconds=10.0, max_seconds=100.0)
    jitter = random.Random(7).uniform(0.5, 1.0)
    for attempts in (5, 6, 10, 50):
        delay = policy.delay(attempts, random.Random(7))
        assert delay.total_seconds() == pytest.approx(100.0 * jitter)
    assert policy.delay(4, random.Random(7)).total_seconds() == pytest.approx(80.0 * jitter)


def test_delay_for_zero_attempts_is_the_base_delay() -> None:
    assert POLICY.delay(0, random.Random(3)) == POLICY.delay(1, random.Random(3))


def test_delay_after_thousands_of_attempts_stays_at_the_cap_without_overflow() -> None:
    for attempts in (1024, 1025, 5000, 1_000_000):
        delay = POLICY.delay(attempts, random.Random(1))
        assert 1800.0 <= delay.total_seconds() <= 3600.0


@pytest.mark.parametrize("attempts", [1, 3, 7, 12])
def test_jitter_stays_between_half_and_all_of_the_nominal_delay(attempts: int) -> None:
    rng = random.Random(1234)
    ratios = [
        POLICY.delay(attempts, rng).total_seconds() / nominal(POLICY, attempts) for _ in range(2000)
    ]
    assert all(0.5 <= ratio <= 1.0 for ratio in ratios)
    # It is real jitter: the draws spread over the range rather than sitting at one point.
    assert min(ratios) < 0.55
    assert max(ratios) > 0.95


def test_delay_without_an_rng_still_jitters_within_bounds() -> None:
    for _ in range(200):
        seconds = POLICY.delay(2).total_seconds()
        assert 60.0 <= seconds <= 120.0


# --- After a failure -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [Reply(421, "4.4.2 Timeout"), Reply(451, "4.7.1 Greylisted"), Reply(None, "connection lost")],
    ids=str,
)
@pytest.mark.parametrize("attempts", [1, 4])
def test_temporary_failure_within_lifetime_is_deferred_with_backoff(
    reply: Reply, attempts: int
) -> None:
    verdict = after_failure(reply, NOW, attempts, NOW + timedelta(days=3), POLICY)
    assert verdict.status == Status.DEFERRED
    wait = (verdict.next_attempt_at - NOW).total_seconds()
    assert 0.5 * nominal(POLICY, attempts) <= wait <= nominal(POLICY, attempts)
    assert verdict.error == str(reply)


def test_temporary_failure_whose_next_attempt_lands_exactly_on_expiry_is_deferred(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pin the jitter to its top (1.0): attempts=3 then waits exactly 240 s.
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    expires_at = NOW + timedelta(seconds=240)
    verdict = after_failure(Reply(421, "busy"), NOW, 3, expires_at, POLICY)
    assert verdict.status == Status.DEFERRED
    assert verdict.next_attempt_at == expires_at


def test_temporary_failure_one_second_short_of_the_next_attempt_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    expires_at = NOW + timedelta(seconds=239)
    verdict = after_failure(Reply(421, "busy"), NOW, 3, expires_at, POLICY)
    assert verdict.status == Status.FAILED


@pytest.mark.parametrize(("attempts", "plural"), [(1, "1 attempt;"), (5, "5 attempts;")])
def test_temporary_failure_whose_next_attempt_would_pass_expiry_fails_keeping_the_last_error(
    attempts: int, plural: str
) -> None:
    # Even the shortest wait (half the nominal delay) ends after expiry.
    expires_at = NOW + timedelta(seconds=0.5 * nominal(POLICY, attempts) - 1)
    reply = Reply(421, "4.4.2 Connection timed out")
    verdict = after_failure(reply, NOW, attempts, expires_at, POLICY)
    assert verdict.status == Status.FAILED
    assert verdict.next_attempt_at == NOW
    assert "lifetime exceeded" in verdict.error
    assert plural in verdict.error
    assert verdict.error.endswith("last error: 421 4.4.2 Connection timed out")


def test_failure_after_expiry_has_already_passed_fails() -> None:
    verdict = after_failure(Reply(None, "refused"), NOW, 9, NOW - timedelta(hours=1), POLICY)
    assert verdict.status == Status.FAILED
    assert "last error: refused" in verdict.error


@pytest.mark.parametrize(
    "reply",
    [Reply(550, "5.1.1 User unknown"), Reply(554, "5.7.1 Spam"), Reply(552, "Too big")],
    ids=str,
)
def test_permanent_failure_fails_at_once_whatever_the_lifetime_left(reply: Reply) -> None:
    verdict = after_failure(reply, NOW, 1, NOW + timedelta(days=3), POLICY)
    assert verdict.status == Status.FAILED
    assert verdict.next_attempt_at == NOW
    assert verdict.error == str(reply)
    assert "lifetime" not in verdict.error

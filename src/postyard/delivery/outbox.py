"""The outbox: rows go in as `queued`; workers claim them under a lease and record outcomes."""

from __future__ import annotations

import logging
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, Row, bindparam, event, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from postyard.db.bulk import Bulk
from postyard.db.models import Delivery, DeliveryAttempt, DeliveryContent, Suppression
from postyard.delivery.policy import CLAIMABLE, Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Letter:
    """The content and addressing of one message, as queued.

    A letter that must not go out is still recorded, so that the reason is
    visible per recipient: `suppressed_because` (an unsubscribed person, say)
    or `failed_because` (a template that failed to render for this person).
    """

    campaign_type: str
    to_address: str
    from_address: str
    subject: str
    text_body: str | None = None
    html_body: str | None = None
    reply_to: str | None = None
    headers: dict[str, str] | None = None
    campaign_id: int | None = None
    person_id: str | None = None
    suppressed_because: str | None = None
    failed_because: str | None = None


SUPPRESSION_LIST = "address is on the workspace's suppression list"


def enqueue(
    session: Session, workspace_id: int, letter: Letter, now: datetime, lifetime: timedelta
) -> Delivery:
    [delivery_id] = enqueue_many(session, workspace_id, [letter], now, lifetime)
    return session.get_one(Delivery, delivery_id)


def enqueue_many(
    session: Session,
    workspace_id: int,
    letters: Sequence[Letter],
    now: datetime,
    lifetime: timedelta,
) -> list[int]:
    """Queue messages in one statement per table; addresses on the suppression list are
    recorded as such. Returns the new ids, in the letters' order."""
    if not letters:
        return []
    rows = _rows(session, workspace_id, letters, now, lifetime)
    return _insert(session, rows, letters)


def enqueue_counted(
    session: Session,
    workspace_id: int,
    letters: Sequence[Letter],
    now: datetime,
    lifetime: timedelta,
) -> Counter[Status]:
    """`enqueue_many` for callers that count outcomes (a newsletter's fan-out): how many rows
    went in with each status, known from the rows written rather than read back."""
    if not letters:
        return Counter()
    rows = _rows(session, workspace_id, letters, now, lifetime)
    _insert(session, rows, letters)
    return Counter(row["status"] for row in rows)


def _insert(
    session: Session, rows: Sequence[dict[str, object]], letters: Sequence[Letter]
) -> list[int]:
    """Write the outbox rows, then their contents; returns the new ids, in the rows' order.

    The ids are known without asking for each one back, which cost more than the inserts
    (SQLAlchemy then inserts one row at a time on SQLite, or builds multi-row statements
    row by row): PostgreSQL hands them out from the table's sequence first, and on SQLite
    the rows take the next values of the table's AUTOINCREMENT counter, one by one, while
    this transaction holds the one write lock (`_ids_taken`)."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        ids = list(connection.execute(_NEXT_IDS, {"count": len(rows)}).scalars())
        _INSERT_DELIVERIES.execute(
            connection, [row | {"id": id_} for row, id_ in zip(rows, ids, strict=True)]
        )
    else:
        _INSERT_DELIVERIES.execute(connection, rows)
        ids = _ids_taken(connection, rows)
    _INSERT_CONTENTS.execute(
        connection,
        [
            {
                "delivery_id": id_,
                "text_body": letter.text_body,
                "html_body": letter.html_body,
                "headers": letter.headers,
            }
            for id_, letter in zip(ids, letters, strict=True)
        ],
    )
    return ids


def _ids_taken(connection: Connection, rows: Sequence[dict[str, object]]) -> list[int]:
    """The rowids SQLite gave `rows`, just inserted in order: each took the next of the
    table's AUTOINCREMENT counter, and no other connection can write before this one
    commits, so they run up to `last_insert_rowid()`. The first and last rows are read back
    to be sure: a batch whose ids are not what they seem fails whole."""
    last = connection.exec_driver_sql("SELECT last_insert_rowid()").scalar_one()
    first = last - len(rows) + 1
    ends = select(Delivery.id, Delivery.message_id).where(Delivery.id.in_({first, last}))
    found = {id_: message_id for id_, message_id in connection.execute(ends)}
    if (found.get(first), found.get(last)) != (rows[0]["message_id"], rows[-1]["message_id"]):
        raise RuntimeError("the new outbox rows did not take consecutive rowids")
    return list(range(first, last + 1))


def _rows(
    session: Session,
    workspace_id: int,
    letters: Sequence[Letter],
    now: datetime,
    lifetime: timedelta,
) -> list[dict[str, object]]:
    """The letters' rows; a session that queues mail due now wakes workers when it commits."""
    suppressed = suppressed_among(session, workspace_id, [letter.to_address for letter in letters])
    expires_at = now + lifetime  # one object for the batch: its stored form is computed once
    rows = [_row(workspace_id, letter, suppressed, now, expires_at) for letter in letters]
    if any(row["status"] is Status.QUEUED for row in rows):
        session.info[_DUE_NOW] = True
    return rows


def _row(
    workspace_id: int, letter: Letter, suppressed: set[str], now: datetime, expires_at: datetime
) -> dict[str, object]:
    status, reason = Status.QUEUED, None
    if letter.failed_because:
        status, reason = Status.FAILED, letter.failed_because
    elif letter.suppressed_because:
        status, reason = Status.SUPPRESSED, letter.suppressed_because
    elif letter.to_address.lower() in suppressed:
        status, reason = Status.SUPPRESSED, SUPPRESSION_LIST
    return {
        "workspace_id": workspace_id,
        "campaign_type": letter.campaign_type,
        "campaign_id": letter.campaign_id,
        "person_id": letter.person_id,
        "to_address": letter.to_address,
        "from_address": letter.from_address,
        "reply_to": letter.reply_to,
        "subject": letter.subject,
        "message_id": new_message_id(letter.from_address),
        "status": status,
        "attempts": 0,
        "next_attempt_at": now,
        "expires_at": expires_at,
        "last_error": reason,
        "created_at": now,
        "updated_at": now,
    }


_INSERT_DELIVERIES = Bulk(insert(Delivery.__table__))
_INSERT_CONTENTS = Bulk(insert(DeliveryContent.__table__))
_NEXT_IDS = text(
    "SELECT nextval(pg_get_serial_sequence('deliveries', 'id')) FROM generate_series(1, :count)"
)


def retry_deferred_now(session: Session, workspace_id: int, now: datetime) -> None:
    """Bring a workspace's deferred mail forward after its servers changed.

    A deferred message waits out its backoff; once a server is added, edited or
    given another role it may have a working route at once (R6, R7), and an
    hour's wait for the next scheduled attempt would hide that.
    """
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.workspace_id == workspace_id,
            Delivery.status == Status.DEFERRED,
            Delivery.next_attempt_at > now,
        )
        .values(next_attempt_at=now)
    )
    if result.rowcount:
        session.info[_DUE_NOW] = True


# Wake-ups: a worker in the same process as the code that queues mail (`postyard serve`)
# need not wait out its idle poll. `enqueue_many` marks its session; once that session
# commits, the callbacks registered for its engine run (in the committing thread, so they
# must be thread-safe and quick). Other processes still find the mail by polling.

_DUE_NOW = "postyard.outbox.due_now"
_wakers: dict[Engine, list[Callable[[], None]]] = {}
_wakers_lock = threading.Lock()
_listening = False


def when_due(engine: Engine, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` after each commit, through a session bound to `engine`, that queued
    mail due at once; returns the function that unregisters it."""
    global _listening
    with _wakers_lock:
        if not _listening:
            event.listen(Session, "after_commit", _after_commit)
            event.listen(Session, "after_rollback", _after_rollback)
            _listening = True
        _wakers.setdefault(engine, []).append(callback)

    def forget() -> None:
        with _wakers_lock:
            callbacks = _wakers.get(engine, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                _wakers.pop(engine, None)

    return forget


def _after_commit(session: Session) -> None:
    if not session.info.pop(_DUE_NOW, False):
        return
    with _wakers_lock:
        callbacks = list(_wakers.get(session.bind, ()))  # type: ignore[arg-type]
    for callback in callbacks:
        try:
            callback()
        except Exception:  # a wake-up is an optimisation: polling still finds the mail
            log.exception("outbox wake-up callback failed")


def _after_rollback(session: Session) -> None:
    session.info.pop(_DUE_NOW, None)


def withdraw_waiting(
    session: Session,
    workspace_id: int,
    person_id: str,
    status: Status,
    reason: str,
    now: datetime,
    *,
    campaign_mail_only: bool = False,
) -> None:
    """End a person's queued and deferred mail with `status` and the reason, unsent.

    Mail already being handed to an SMTP server (`sending`) is past recall.
    """
    query = update(Delivery).where(
        Delivery.workspace_id == workspace_id,
        Delivery.person_id == person_id,
        Delivery.status.in_(CLAIMABLE),
    )
    if campaign_mail_only:
        query = query.where(Delivery.campaign_id.is_not(None))
    session.execute(query.values(status=status, last_error=reason, updated_at=now))


def new_message_id(from_address: str) -> str:
    """A Message-ID fixed at queue time, so every retry of a message carries the same one."""
    return f"<{secrets.token_hex(16)}@{_message_id_domain(from_address)}>"


@lru_cache(maxsize=1024)
def _message_id_domain(from_address: str) -> str:
    """The From address's domain, ASCII; parsed once per sender, not once per message."""
    domain = parseaddr(from_address)[1].rpartition("@")[2] or "postyard.invalid"
    try:  # a header must be ASCII: an internationalised domain goes in its IDNA form
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "postyard.invalid"


def suppressed_among(session: Session, workspace_id: int, addresses: Sequence[str]) -> set[str]:
    rows = session.scalars(
        select(Suppression.email).where(
            Suppression.workspace_id == workspace_id,
            Suppression.email.in_({address.lower() for address in addresses}),
        )
    )
    return set(rows)


def suppress(session: Session, workspace_id: int, address: str, reason: str) -> None:
    """Add an address to the list; already being on it is not an error."""
    insert = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(Suppression)
        .values(workspace_id=workspace_id, email=address.lower(), reason=reason)
        .on_conflict_do_nothing()
    )


class Claimed(NamedTuple):
    """A delivery a worker holds the lease on, detached from any session.

    A named tuple, built straight from its row: a frozen dataclass cost ~4 µs per message
    to construct, field by field."""

    id: int
    workspace_id: int
    campaign_type: str
    to_address: str
    from_address: str
    reply_to: str | None
    subject: str
    message_id: str
    attempts: int
    expires_at: datetime
    # From `delivery_contents`, read after the claim: last, so that a claimed row and its
    # content row make a Claimed side by side.
    text_body: str | None
    html_body: str | None
    headers: dict[str, str] | None


_CONTENT_COLUMNS = (DeliveryContent.text_body, DeliveryContent.html_body, DeliveryContent.headers)
_CLAIMED_COLUMNS = [
    getattr(Delivery.__table__.c, name) for name in Claimed._fields[: -len(_CONTENT_COLUMNS)]
]
_NO_CONTENT = (None,) * len(_CONTENT_COLUMNS)


CLAIM_ORDER = (Status.SENDING, Status.DEFERRED, Status.QUEUED)
"""Whose turn comes first when a worker claims: rows whose lease ran out (in flight when a
worker died: by their lease expiry they would wait behind the whole backlog, so the set in
flight would grow with every crash), then retries that are due, then new mail."""


def claim(
    session: Session, owner: str, limit: int, now: datetime, lease: timedelta
) -> list[Claimed]:
    """Take up to `limit` due deliveries with their contents, in one transaction."""
    return with_contents(session, lease_due(session, owner, limit, now, lease))


def lease_due(
    session: Session, owner: str, limit: int, now: datetime, lease: timedelta
) -> list[Row[Any]]:
    """Lease up to `limit` due deliveries to `owner`, counting this as an attempt of each;
    `with_contents` makes them `Claimed`.

    Due means sending with its lease run out, or queued or deferred with its next attempt
    reached; taken status by status in `CLAIM_ORDER`, oldest first within each. One
    statement per status reads one range of the (status, next_attempt_at) index in order,
    so a claim costs the same with a million rows waiting as with ten; a single statement
    over several statuses had to sort every due row. PostgreSQL skips rows other workers
    are claiming; SQLite serialises writers, which has the same effect.
    """
    rows: list[Row[Any]] = []
    for status in CLAIM_ORDER:
        if len(rows) == limit:
            break
        rows += _claim_due(session, status, owner, limit - len(rows), now, lease)
    return rows


def with_contents(session: Session, leased: Sequence[Row[Any]]) -> list[Claimed]:
    """The leased rows with their bodies and headers, read in one statement.

    A worker reads them after its lease is committed, in a transaction of their own: on
    SQLite the lease's transaction holds the database's one write lock, which fan-out and
    the other workers wait for, and the contents are a third of a claim's work."""
    if not leased:
        return []
    found = session.connection().execute(
        select(DeliveryContent.delivery_id, *_CONTENT_COLUMNS).where(
            DeliveryContent.delivery_id.in_([row[0] for row in leased])
        )
    )
    contents = {row[0]: row[1:] for row in found}
    return [Claimed(*row, *contents.get(row[0], _NO_CONTENT)) for row in leased]


def _claim_due(
    session: Session,
    status: Status,
    owner: str,
    limit: int,
    now: datetime,
    lease: timedelta,
) -> list[Row[Any]]:
    """Lease up to `limit` rows in `status` whose `next_attempt_at` has come, oldest first.

    Core statements on the session's connection: the ORM's bookkeeping cost more than the
    UPDATE itself."""
    table = Delivery.__table__
    due = (
        select(table.c.id)
        .where(table.c.status == status, table.c.next_attempt_at <= now)
        .order_by(table.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.connection().execute(
        update(table)
        .where(table.c.id.in_(due.scalar_subquery()))
        .values(
            status=Status.SENDING,
            lease_owner=owner,
            next_attempt_at=now + lease,
            attempts=table.c.attempts + 1,
            updated_at=now,
        )
        .returning(*_CLAIMED_COLUMNS)
    )
    return list(rows)


def renew(
    session: Session, owner: str, ids: Sequence[int], now: datetime, lease: timedelta
) -> set[int]:
    """Extend the lease of rows this worker still holds; returns the ids it still holds.

    A leased row's `next_attempt_at` is its lease expiry: a batch slower than the lease
    pushes it forward while its messages are in flight, so that no other worker claims them.
    """
    if not ids:
        return set()
    rows = session.execute(
        update(Delivery)
        .where(
            Delivery.id.in_(ids),
            Delivery.lease_owner == owner,
            Delivery.status == Status.SENDING,
        )
        .values(next_attempt_at=now + lease)
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    )
    return set(rows.scalars())


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed delivery."""

    delivery_id: int
    status: Status
    next_attempt_at: datetime
    smtp_server_id: int | None = None
    route_via: str | None = None
    smtp_response: str | None = None
    last_error: str | None = None
    sent_at: datetime | None = None


def record(session: Session, owner: str, outcomes: Sequence[Outcome], now: datetime) -> None:
    """Write outcomes for rows this worker still leases; a row another worker took is left."""
    if not outcomes:
        return
    connection = session.connection()
    _RECORD.execute(
        connection,
        [
            {"owner": owner, "now": now}
            | {f"new_{name}": getattr(o, name) for name in _OUTCOME_FIELDS}
            for o in outcomes
        ],
    )
    _INSERT_ATTEMPTS.execute(
        connection, [_attempt_row(o, now) for o in outcomes if o.status in ATTEMPTED]
    )


_OUTCOME_FIELDS = tuple(Outcome.__dataclass_fields__)
# A plain getattr per field: `dataclasses.asdict` deep-copies each value, which cost more
# than the UPDATE itself per outcome.
_OUTCOME_COLUMNS = [name for name in _OUTCOME_FIELDS if name != "delivery_id"]
# Outcomes that were an attempt, kept in `delivery_attempts`: a message handed to a server,
# or one that could not be (no route, a template that failed). A suppressed message was
# never attempted; a hand-back (`Worker._release`) is not an outcome and never comes here.
ATTEMPTED = frozenset({Status.SENT, Status.DEFERRED, Status.FAILED})


_RECORD = Bulk(
    update(Delivery.__table__)
    .where(
        Delivery.__table__.c.id == bindparam("new_delivery_id"),
        Delivery.__table__.c.lease_owner == bindparam("owner"),
        Delivery.__table__.c.status == Status.SENDING,
    )
    .values(
        {name: bindparam(f"new_{name}") for name in _OUTCOME_COLUMNS}
        | {"lease_owner": None, "updated_at": bindparam("now")}
    )
)
_INSERT_ATTEMPTS = Bulk(insert(DeliveryAttempt.__table__))


def _attempt_row(outcome: Outcome, now: datetime) -> dict[str, object]:
    """The history row of one attempt; recorded even if another worker has taken the
    delivery since, since the attempt happened all the same."""
    response = outcome.smtp_response
    code = response[:3] if response else ""
    return {
        "delivery_id": outcome.delivery_id,
        "attempted_at": now,
        "status": outcome.status.value,
        "smtp_server_id": outcome.smtp_server_id,
        "route_via": outcome.route_via,
        "reply_code": int(code) if code.isdigit() else None,
        "reply": response if outcome.status is Status.SENT else outcome.last_error or response,
    }

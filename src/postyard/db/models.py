"""The tables. Column types are chosen to behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from postyard.clock import utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# SQLite would otherwise give a deleted row's id to the next row: a delivery's
# smtp_server_id, an unsubscribe link or a log line would then name the wrong thing.
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Workspace(Base):
    __tablename__ = "workspaces"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(20))
    failover: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Whether mail for an unreachable server goes through the primary All Emails server."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(10), default="admin", server_default="admin")
    """`admin` (every endpoint) or `track` (people, events, batch); see services.keys.Scope."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class WebSession(Base):
    """A signed-in browser: the cookie carries a token whose hash is stored here,
    so signing out (or revoking the key) ends the session even for a copied cookie."""

    __tablename__ = "web_sessions"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    api_key_id: Mapped[int] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)


class AuditEvent(Base):
    """One configuration change: who (the key's name), what, and the values before and after.

    Secrets never reach `before`/`after`: they are written as `***`.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_workspace", "workspace_id", "id"),
        Index("ix_audit_events_object", "workspace_id", "object_type", "object_id", "id"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    occurred_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    api_key_id: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(40))
    object_type: Mapped[str] = mapped_column(String(40))
    object_id: Mapped[str | None] = mapped_column(String(200))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class SmtpServer(Base):
    __tablename__ = "smtp_servers"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    security: Mapped[str] = mapped_column(String(10))
    username: Mapped[str | None] = mapped_column(String(255))
    password_encrypted: Mapped[str | None] = mapped_column(Text)
    ca_bundle: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(40))
    position: Mapped[int] = mapped_column(Integer)
    max_connections: Mapped[int] = mapped_column(Integer, default=4)
    rate_limit_per_second: Mapped[float | None] = mapped_column(Float)
    """Messages per second across all workers; None: as fast as the server takes them."""
    max_messages_per_connection: Mapped[int | None] = mapped_column(Integer)
    """A connection is closed after this many messages; None: reused without limit."""
    unreachable_since: Mapped[datetime | None] = mapped_column(DateTime)
    """Set by a worker that could not reach the server, cleared by the next that could."""
    unreachable_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Delivery(Base):
    """One message to one recipient: the outbox row the worker claims and records.

    While a row is `sending`, `next_attempt_at` is when its lease runs out: a
    worker that dies leaves the row to be claimed again at that moment, by the
    same query that claims queued and deferred rows.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_workspace", "workspace_id", "id"),
        Index("ix_deliveries_campaign_person", "campaign_id", "person_id"),
        Index("ix_deliveries_campaign_address", "campaign_id", "to_address"),
        Index("ix_deliveries_person", "workspace_id", "person_id"),
        Index("ix_deliveries_workspace_sent", "workspace_id", "sent_at"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    campaign_type: Mapped[str] = mapped_column(String(40))
    campaign_id: Mapped[int | None] = mapped_column(Integer)
    person_id: Mapped[str | None] = mapped_column(String(200))
    to_address: Mapped[str] = mapped_column(String(320))
    from_address: Mapped[str] = mapped_column(String(320))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    smtp_server_id: Mapped[int | None] = mapped_column(Integer)
    route_via: Mapped[str | None] = mapped_column(String(20))
    last_error: Mapped[str | None] = mapped_column(Text)
    smtp_response: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)


class DeliveryContent(Base):
    """A delivery's bodies and extra headers, written once when it is queued and read when a
    worker claims it.

    Kept apart from the outbox row, which workers rewrite at every claim and every outcome:
    with a message's kilobytes inline, each of those small updates copied the whole message
    (on SQLite, a page per row into the write-ahead log and back).
    """

    __tablename__ = "delivery_contents"

    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    text_body: Mapped[str | None] = mapped_column(Text)
    html_body: Mapped[str | None] = mapped_column(Text)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSON)


class DeliveryAttempt(Base):
    """One SMTP attempt of a delivery, with the server's reply: the history behind its status."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (
        Index("ix_delivery_attempts_delivery", "delivery_id", "id"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(20))
    smtp_server_id: Mapped[int | None] = mapped_column(Integer)
    route_via: Mapped[str | None] = mapped_column(String(20))
    reply_code: Mapped[int | None] = mapped_column(Integer)
    reply: Mapped[str | None] = mapped_column(Text)


class Suppression(Base):
    __tablename__ = "suppressions"
    __table_args__ = (
        UniqueConstraint("workspace_id", "email"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Person(Base):
    """Someone a workspace may write to; `person_id` is the workspace's own id for them."""

    __tablename__ = "people"
    __table_args__ = (
        UniqueConstraint("workspace_id", "person_id"),
        Index("ix_people_email", "workspace_id", "email"),
        Index("ix_people_workspace", "workspace_id", "id"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    person_id: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    unsubscribed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class PersonEvent(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_person_name", "person_pk", "name", "timestamp"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    person_pk: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timestamp: Mapped[datetime] = mapped_column(DateTime)


class Segment(Base):
    __tablename__ = "segments"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    conditions: Mapped[dict[str, Any]] = mapped_column(JSON)
    time_window: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SegmentMember(Base):
    __tablename__ = "segment_members"
    __table_args__ = (Index("ix_segment_members_person", "person_pk"),)

    segment_id: Mapped[int] = mapped_column(
        ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    person_pk: Mapped[int] = mapped_column(
        ForeignKey("people.id", ondelete="CASCADE"), primary_key=True
    )
    entered_at: Mapped[datetime] = mapped_column(DateTime)


class Campaign(Base):
    """One campaign of any of the four types; `trigger` and `audience` hold the type's settings.

    A newsletter's send is streamed in batches by whichever process claims it:
    `lease_until` is that claim (renewed with each batch, which it also fences),
    `fanout_cursor` the last person id queued, so a send that dies resumes.
    """

    __tablename__ = "campaigns"
    __table_args__ = (
        Index("ix_campaigns_state", "state"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(20))
    message: Mapped[dict[str, Any]] = mapped_column(JSON)
    trigger: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    audience: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    send_at: Mapped[datetime | None] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    fanout_cursor: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class BroadcastTrigger(Base):
    """One API call that triggered a broadcast; processed in batches like a newsletter's send
    (`lease_until`, `fanout_cursor`: a person id, or a position in the request's list)."""

    __tablename__ = "broadcast_triggers"
    __table_args__ = (
        Index("ix_broadcast_triggers_state", "state"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), index=True
    )
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20))
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    fanout_cursor: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class ServerSlot(Base):
    """One of a server's `max_connections` connection slots, leased by the worker process
    holding a connection in it, so that the limit holds across all workers.

    `expires_at` is renewed while the connection lives; a worker that dies leaves its
    slots to be taken again once they expire. No foreign key: a worker may still be
    closing a connection to a server just deleted, and ids are never reused.
    """

    __tablename__ = "smtp_server_slots"

    server_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str | None] = mapped_column(String(100))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)


class ServerThrottle(Base):
    """What the workers share about one server beyond its slots.

    `next_free_at`: when a rate-limited server may next be sent a message, as Unix seconds;
    workers reserve send times from it in small chunks. A float, not a DateTime, so that
    "the later of this and now, plus n/rate" is one portable UPDATE on both databases.
    `wanted_at`: when a worker last found every slot taken; holders then give back their
    idle connections at once instead of after a while.
    """

    __tablename__ = "smtp_server_throttles"

    server_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    next_free_at: Mapped[float | None] = mapped_column(Float)
    wanted_at: Mapped[datetime | None] = mapped_column(DateTime)

"""The workspace suppression list: addresses no mail goes to, whoever it is addressed as.

Hard bounces put addresses on it (the delivery worker); people add and remove
entries by hand. Entries are kept in lower case, as `outbox.suppress` stores them
and as the outbox and the worker compare them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from postyard.db.models import Suppression
from postyard.delivery import outbox
from postyard.services.errors import NotFound
from postyard.services.workspaces import Caller


@dataclass(frozen=True)
class Page:
    suppressions: list[Suppression]
    next_cursor: int | None


def list_suppressions(
    session: Session, caller: Caller, search: str | None, limit: int, before: int | None
) -> Page:
    """Newest first; `search` matches any part of the address; `before` is the previous cursor."""
    query = select(Suppression).where(Suppression.workspace_id == caller.workspace_id)
    if search:
        query = query.where(Suppression.email.contains(search.lower(), autoescape=True))
    if before is not None:
        query = query.where(Suppression.id < before)
    rows = list(session.scalars(query.order_by(Suppression.id.desc()).limit(limit + 1)))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return Page(rows[:limit], next_cursor)


def add_suppression(
    session: Session, caller: Caller, email: str, reason: str
) -> tuple[Suppression, bool]:
    """The entry for `email`, and whether this call added it.

    An address already on the list keeps its entry and its first reason: a hard
    bounce recorded by the worker says more than a later manual entry would.
    """
    existing = session.scalars(_entry(caller, email)).one_or_none()
    if existing is not None:
        return existing, False
    # Should a concurrent request add the address in between, this keeps their entry
    # (and answers as if it had added it): the list still holds the address once.
    outbox.suppress(session, caller.workspace_id, email, reason)
    return session.scalars(_entry(caller, email)).one(), True


def remove_suppression(session: Session, caller: Caller, email: str) -> None:
    entry = session.scalars(_entry(caller, email)).one_or_none()
    if entry is None:
        raise NotFound(f"'{email}' is not on this workspace's suppression list.")
    session.delete(entry)


def _entry(caller: Caller, email: str) -> Select[tuple[Suppression]]:
    return select(Suppression).where(
        Suppression.workspace_id == caller.workspace_id, Suppression.email == email.lower()
    )

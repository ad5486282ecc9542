"""A workspace's API keys: several, each named and scoped, revocable one by one.

The key itself is shown once, when it is created; only its SHA-256 is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from postyard.clock import utcnow
from postyard.db.models import ApiKey
from postyard.secretbox import hash_api_key, new_api_key
from postyard.services import audit
from postyard.services.audit import Action, Actor, ObjectType
from postyard.services.errors import NotFound


class Scope(StrEnum):
    """What a key may do. `track` is for code that runs where keys leak (a mobile app, a
    browser, a partner's server): it may send people and events, and read or change nothing
    else."""

    ADMIN = "admin"
    TRACK = "track"


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    api_key: str
    """The key itself, shown this once."""


def create_key(session: Session, actor: Actor, name: str, scope: Scope) -> NewKey:
    """A new key in the actor's workspace."""
    api_key = new_api_key()
    row = ApiKey(
        workspace_id=actor.workspace_id,
        name=name,
        scope=scope.value,
        key_hash=hash_api_key(api_key),
    )
    session.add(row)
    session.flush()
    audit.record(
        session, actor, Action.CREATE, ObjectType.API_KEY, row.id, None, audit.snapshot(row)
    )
    return NewKey(row, api_key)


def list_keys(session: Session, workspace_id: int) -> list[ApiKey]:
    """Every key of the workspace, revoked ones too, oldest first."""
    return list(
        session.scalars(
            select(ApiKey).where(ApiKey.workspace_id == workspace_id).order_by(ApiKey.id)
        )
    )


def revoke_key(session: Session, key_id: int, actor: Actor | None = None) -> ApiKey:
    """Revoke the key (in the actor's workspace, if given): it answers 401 from the next request.

    Without an actor the operator's command line revokes it, in whichever workspace it is.
    Revoking a revoked key changes nothing and keeps the time of the first revocation.
    """
    query = select(ApiKey).where(ApiKey.id == key_id)
    if actor is not None:
        query = query.where(ApiKey.workspace_id == actor.workspace_id)
    key = session.scalars(query).one_or_none()
    if key is None:
        raise NotFound(f"There is no API key {key_id}.")
    if key.revoked_at is None:
        before = audit.snapshot(key)
        key.revoked_at = utcnow()
        session.flush()
        audit.record(
            session,
            actor or Actor.cli(key.workspace_id),
            Action.REVOKE,
            ObjectType.API_KEY,
            key.id,
            before,
            audit.snapshot(key),
        )
    return key

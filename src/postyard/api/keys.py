"""`/v1/keys`: a workspace's API keys. The key itself is in the answer to `POST` only."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from postyard.api.context import Context, CurrentCaller
from postyard.api.fields import STRICT, Name, RowId
from postyard.clock import isoformat
from postyard.db.models import ApiKey
from postyard.services import keys
from postyard.services.keys import Scope

router = APIRouter(prefix="/v1/keys", tags=["API keys"])


class KeyCreate(BaseModel):
    model_config = STRICT

    name: Name
    scope: Scope = Scope.ADMIN


class KeyOut(BaseModel):
    id: int
    name: str
    scope: Scope
    created_at: str | None
    last_used_at: str | None
    """Updated at most once a minute."""
    revoked_at: str | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(
            id=key.id,
            name=key.name,
            scope=Scope(key.scope),
            created_at=isoformat(key.created_at),
            last_used_at=isoformat(key.last_used_at),
            revoked_at=isoformat(key.revoked_at),
        )


class KeyCreated(KeyOut):
    key: str
    """The API key itself: shown only in this answer, as only its hash is stored."""


class KeyList(BaseModel):
    data: list[KeyOut]


class KeyRevoked(KeyOut):
    revoked_own_key: bool
    message: str


@router.post("", status_code=201)
def create_key(body: KeyCreate, caller: CurrentCaller, context: Context) -> KeyCreated:
    """A new key; keep `key` now, it cannot be shown again."""
    with context.database.session() as session:
        created = keys.create_key(session, caller.actor, body.name, body.scope)
        session.refresh(created.key)
        return KeyCreated(**KeyOut.of(created.key).model_dump(), key=created.api_key)


@router.get("")
def list_keys(caller: CurrentCaller, context: Context) -> KeyList:
    """Every key of the workspace, revoked ones included; never the keys themselves."""
    with context.database.session() as session:
        return KeyList(data=[KeyOut.of(k) for k in keys.list_keys(session, caller.workspace_id)])


@router.delete("/{key_id}")
def revoke_key(key_id: RowId, caller: CurrentCaller, context: Context) -> KeyRevoked:
    """Revoke the key: requests with it answer 401 from now on, and its web sessions end.

    Revoking the key this request is made with is allowed, and the answer says so.
    """
    with context.database.session() as session:
        key = keys.revoke_key(session, key_id, caller.actor)
        own = key.id == caller.key_id
        message = (
            "Revoked the key this request was made with: it no longer works."
            if own
            else f"Revoked the API key '{key.name}'."
        )
        return KeyRevoked(**KeyOut.of(key).model_dump(), revoked_own_key=own, message=message)

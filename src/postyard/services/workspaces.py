"""Workspaces and the API keys that act for them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from postyard.clock import utcnow
from postyard.db.models import ApiKey, Workspace
from postyard.routing import Plan
from postyard.secretbox import hash_api_key
from postyard.services import audit
from postyard.services.audit import Action, Actor, ObjectType
from postyard.services.keys import Scope, create_key

# Recording every request's time would make each read a write; a minute is precise enough.
LAST_USED_PRECISION = timedelta(minutes=1)


@dataclass(frozen=True)
class Caller:
    """The workspace an authenticated request acts for."""

    workspace_id: int
    plan: Plan
    key_id: int
    scope: Scope = Scope.ADMIN
    key_name: str | None = None
    """None when no key is behind the call: the command line, acting in-process."""

    @property
    def actor(self) -> Actor:
        """Who the audit trail names for the changes this caller makes."""
        if self.key_name is None:
            return Actor.cli(self.workspace_id)
        return Actor(self.workspace_id, self.key_name, self.key_id)


@dataclass(frozen=True)
class NewWorkspace:
    workspace_id: int
    api_key: str


def create_workspace(session: Session, name: str, plan: Plan) -> NewWorkspace:
    workspace = Workspace(name=name, plan=plan.value)
    session.add(workspace)
    session.flush()
    created = create_key(session, Actor.cli(workspace.id), "default", Scope.ADMIN)
    return NewWorkspace(workspace.id, created.api_key)


def authenticate(session: Session, api_key: str) -> Caller | None:
    row = session.execute(
        select(
            ApiKey.id, ApiKey.name, ApiKey.scope, ApiKey.last_used_at, Workspace.id, Workspace.plan
        )
        .join(Workspace, Workspace.id == ApiKey.workspace_id)
        .where(ApiKey.key_hash == hash_api_key(api_key), ApiKey.revoked_at.is_(None))
    ).one_or_none()
    if row is None:
        return None
    key_id, key_name, scope, last_used_at, workspace_id, plan = row
    now = utcnow()
    if last_used_at is None or now - last_used_at > LAST_USED_PRECISION:
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
    return Caller(workspace_id, Plan(plan), key_id, Scope(scope), key_name)


def lock_workspace(session: Session, workspace_id: int) -> None:
    """Serialise changes to one workspace's configuration.

    A no-op update takes the row lock on PostgreSQL and the write lock on
    SQLite, so two concurrent requests cannot both pass a rule check (the plan
    cap, a role held once) that only one of them may pass.
    """
    session.execute(
        update(Workspace).where(Workspace.id == workspace_id).values(plan=Workspace.plan)
    )


@dataclass(frozen=True)
class WorkspaceSettings:
    """The settings of a workspace that its administrators may read and change."""

    workspace_id: int
    name: str
    plan: Plan
    failover: bool


def workspace_settings(session: Session, caller: Caller) -> WorkspaceSettings:
    workspace = session.get_one(Workspace, caller.workspace_id)
    return WorkspaceSettings(workspace.id, workspace.name, Plan(workspace.plan), workspace.failover)


def update_workspace_settings(
    session: Session, caller: Caller, *, failover: bool | None = None
) -> WorkspaceSettings:
    """Change the settings given; None leaves one as it is. Workers read `failover` at
    their next batch."""
    if failover is not None:
        before = audit.snapshot(session.get_one(Workspace, caller.workspace_id))
        session.execute(
            update(Workspace).where(Workspace.id == caller.workspace_id).values(failover=failover)
        )
        after = {**before, "failover": failover}
        audit.record(
            session,
            caller.actor,
            Action.UPDATE,
            ObjectType.WORKSPACE,
            caller.workspace_id,
            before,
            after,
        )
    return workspace_settings(session, caller)

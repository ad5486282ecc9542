"""`/v1/workspace`: the settings of the caller's workspace (failover, for now)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, StrictBool

from postyard.api.context import Context, CurrentCaller
from postyard.api.fields import Patch
from postyard.routing import Plan
from postyard.services.workspaces import (
    WorkspaceSettings,
    update_workspace_settings,
    workspace_settings,
)

router = APIRouter(prefix="/v1/workspace", tags=["Workspace"])


class WorkspaceOut(BaseModel):
    id: int
    name: str
    plan: Plan
    failover: bool
    """When on, a campaign type whose own SMTP server cannot be reached (refused, timed out,
    421) is sent through the primary All Emails server until its server is back; each such
    delivery says `via: failover`."""

    @classmethod
    def of(cls, found: WorkspaceSettings) -> WorkspaceOut:
        return cls(id=found.workspace_id, name=found.name, plan=found.plan, failover=found.failover)


class WorkspacePatch(Patch):
    failover: StrictBool | None = None


@router.get("")
def get_workspace(caller: CurrentCaller, context: Context) -> WorkspaceOut:
    with context.database.session() as session:
        return WorkspaceOut.of(workspace_settings(session, caller))


@router.patch("")
def update_workspace(body: WorkspacePatch, caller: CurrentCaller, context: Context) -> WorkspaceOut:
    with context.database.session() as session:
        return WorkspaceOut.of(update_workspace_settings(session, caller, failover=body.failover))

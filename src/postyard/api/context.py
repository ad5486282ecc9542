"""What every request handler needs: settings, the database, the secret box, the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from postyard.clock import Clock, utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.secretbox import SecretBox
from postyard.services.errors import Unauthorized
from postyard.services.runtime import Runtime
from postyard.services.workspaces import Caller, authenticate


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    database: Database
    box: SecretBox
    clock: Clock = utcnow

    @property
    def runtime(self) -> Runtime:
        return Runtime(self.settings, self.box, self.clock)


def app_context(request: Request) -> AppContext:
    return request.app.state.context


def current_caller(
    request: Request, context: Annotated[AppContext, Depends(app_context)]
) -> Caller:
    scheme, _, api_key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not api_key.strip():
        raise Unauthorized("Send the workspace's API key as 'Authorization: Bearer <api key>'.")
    with context.database.session() as session:
        caller = authenticate(session, api_key.strip())
    if caller is None:
        raise Unauthorized("The API key is not valid or has been revoked.")
    return caller


Context = Annotated[AppContext, Depends(app_context)]
CurrentCaller = Annotated[Caller, Depends(current_caller)]

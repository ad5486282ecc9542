"""Signing in to the web UI: a signed session cookie, and CSRF tokens tied to it.

The cookie holds no secret: the workspace id, the API key's id, an expiry and a
random nonce, signed with the instance's secret box. The raw API key is used
once, at sign-in, and never stored. Every request checks that the key still
exists, is not revoked and is an admin key, so revoking a key ends its web
sessions at once.

Each form carries a CSRF token derived from the session's nonce (and, before
sign-in, from a nonce in a short-lived cookie of its own), checked on POST.
Every signed value is prefixed with its purpose, so a value signed for one use
(an unsubscribe link, say) is never accepted for another.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request, Response
from sqlalchemy import select

from postyard.api.context import AppContext, app_context
from postyard.db.models import ApiKey, Workspace
from postyard.routing import Plan
from postyard.secretbox import SecretBox
from postyard.services.keys import Scope
from postyard.services.workspaces import Caller

SESSION_COOKIE = "postyard_session"
SIGNIN_COOKIE = "postyard_signin"
SESSION_SECONDS = 12 * 3600
SIGNIN_SECONDS = 3600

_SESSION = "postyard-web-session|"
_CSRF = "postyard-web-csrf|"
_SIGNIN_CSRF = "postyard-web-signin-csrf|"
_VERSION = "v1"


class SignInRequired(Exception):
    """No valid session: the page answers with a redirect to the sign-in page."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "sign in")
        self.reason = reason


class CsrfFailed(Exception):
    """A POST without the token of the session it claims to come from."""


@dataclass(frozen=True)
class SessionCookie:
    workspace_id: int
    key_id: int
    expires: int
    """Unix time."""
    nonce: str

    def encode(self, box: SecretBox) -> str:
        body = f"{_VERSION}.{self.workspace_id}.{self.key_id}.{self.expires}.{self.nonce}"
        return f"{body}.{box.sign(_SESSION + body)}"

    @classmethod
    def decode(cls, box: SecretBox, value: str, now: datetime) -> SessionCookie | None:
        """The cookie if it is ours, intact and unexpired; None for anything else."""
        body, _, signature = value.rpartition(".")
        parts = body.split(".")
        if len(parts) != 5 or parts[0] != _VERSION or not box.verify(_SESSION + body, signature):
            return None
        try:
            workspace_id, key_id, expires = int(parts[1]), int(parts[2]), int(parts[3])
        except ValueError:
            return None
        if expires <= unix(now):
            return None
        return cls(workspace_id, key_id, expires, parts[4])


@dataclass(frozen=True)
class WebSession:
    """The signed-in workspace of a request, and what its pages need to show forms."""

    caller: Caller
    workspace_name: str
    csrf_token: str


def unix(moment: datetime) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp())


def new_session(caller: Caller, now: datetime) -> SessionCookie:
    return SessionCookie(
        caller.workspace_id, caller.key_id, unix(now) + SESSION_SECONDS, secrets.token_urlsafe(18)
    )


def csrf_token(box: SecretBox, nonce: str) -> str:
    return box.sign(_CSRF + nonce)


def signin_csrf_token(box: SecretBox, nonce: str) -> str:
    return box.sign(_SIGNIN_CSRF + nonce)


def check_signin_csrf(box: SecretBox, nonce: str | None, token: str) -> bool:
    return bool(nonce) and box.verify(_SIGNIN_CSRF + (nonce or ""), token)


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    """HttpOnly, SameSite=Lax, and Secure whenever the page was served over TLS."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path="/", httponly=True, samesite="lax", secure=request.url.scheme == "https"
    )


def current_session(
    request: Request, context: Annotated[AppContext, Depends(app_context)]
) -> WebSession:
    """The request's session, checked against the database; SignInRequired without one."""
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        raise SignInRequired()
    cookie = SessionCookie.decode(context.box, raw, context.clock())
    if cookie is None:
        raise SignInRequired("Your session has ended. Sign in again.")
    with context.database.session() as session:
        row = session.execute(
            select(Workspace.plan, Workspace.name)
            .join(ApiKey, ApiKey.workspace_id == Workspace.id)
            .where(
                ApiKey.id == cookie.key_id,
                Workspace.id == cookie.workspace_id,
                ApiKey.revoked_at.is_(None),
                ApiKey.scope == Scope.ADMIN.value,
            )
        ).one_or_none()
    if row is None:
        raise SignInRequired("The API key you signed in with has been revoked. Sign in again.")
    plan, name = row
    return WebSession(
        Caller(cookie.workspace_id, Plan(plan), cookie.key_id),
        name,
        csrf_token(context.box, cookie.nonce),
    )


CurrentSession = Annotated[WebSession, Depends(current_session)]

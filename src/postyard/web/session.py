"""Signing in to the web UI: a server-side session behind a random cookie, and CSRF tokens.

The cookie holds only a random token; the database keeps its SHA-256 hash
(`web_sessions`), so the raw API key is used once, at sign-in, and never stored,
and a token read from the database is useless as a cookie. Every request looks
the session up: signing out sets `ended_at`, so a copied cookie stops working at
once; a session also ends at its expiry, and when its API key is revoked or is no
longer an admin key (checked on every request, so revoking ends it at once).

Each form carries a CSRF token derived from the session's token (and, before
sign-in, from a nonce in a short-lived cookie of its own), checked on POST.
Every signed value is prefixed with its purpose, so a value signed for one use
(an unsubscribe link, say) is never accepted for another.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request, Response
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from postyard.api.context import AppContext, app_context
from postyard.db.models import ApiKey, Workspace
from postyard.db.models import WebSession as SessionRow
from postyard.routing import Plan
from postyard.secretbox import SecretBox
from postyard.services.keys import Scope
from postyard.services.workspaces import Caller

SESSION_COOKIE = "postyard_session"
SIGNIN_COOKIE = "postyard_signin"
SESSION_SECONDS = 12 * 3600
SIGNIN_SECONDS = 3600

_CSRF = "postyard-web-csrf|"
_SIGNIN_CSRF = "postyard-web-signin-csrf|"
# What `secrets.token_urlsafe(32)` makes; anything else is not worth a query.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


class SignInRequired(Exception):
    """No valid session: the page answers with a redirect to the sign-in page."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "sign in")
        self.reason = reason


class CsrfFailed(Exception):
    """A POST without the token of the session it claims to come from."""


@dataclass(frozen=True)
class WebSession:
    """The signed-in workspace of a request, and what its pages need to show forms."""

    caller: Caller
    workspace_name: str
    csrf_token: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def start_session(session: Session, caller: Caller, now: datetime) -> str:
    """Store a new session for `caller`; returns the token for the cookie (never stored).

    The key's sessions that have ended or expired are removed on the way: they can
    no longer be used, and a busy key must not pile them up.
    """
    session.execute(
        delete(SessionRow).where(
            SessionRow.api_key_id == caller.key_id,
            or_(SessionRow.ended_at.is_not(None), SessionRow.expires_at <= now),
        )
    )
    token = secrets.token_urlsafe(32)
    session.add(
        SessionRow(
            token_hash=token_hash(token),
            workspace_id=caller.workspace_id,
            api_key_id=caller.key_id,
            created_at=now,
            expires_at=now + timedelta(seconds=SESSION_SECONDS),
        )
    )
    return token


def end_session(session: Session, token: str, now: datetime) -> None:
    """Sign out: the session's cookie, wherever it was copied to, is refused from now on."""
    session.execute(
        update(SessionRow)
        .where(SessionRow.token_hash == token_hash(token), SessionRow.ended_at.is_(None))
        .values(ended_at=now)
    )


def csrf_token(box: SecretBox, token: str) -> str:
    return box.sign(_CSRF + token_hash(token))


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
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInRequired()
    ended = SignInRequired("Your session has ended, or its API key was revoked. Sign in again.")
    if not _TOKEN.fullmatch(token):
        raise ended
    with context.database.session() as session:
        row = session.execute(
            select(
                SessionRow.workspace_id,
                SessionRow.api_key_id,
                ApiKey.name,
                Workspace.plan,
                Workspace.name,
            )
            .join(Workspace, Workspace.id == SessionRow.workspace_id)
            .join(ApiKey, ApiKey.id == SessionRow.api_key_id)
            .where(
                SessionRow.token_hash == token_hash(token),
                SessionRow.ended_at.is_(None),
                SessionRow.expires_at > context.clock(),
                ApiKey.workspace_id == SessionRow.workspace_id,
                ApiKey.revoked_at.is_(None),
                ApiKey.scope == Scope.ADMIN.value,
            )
        ).one_or_none()
    if row is None:
        raise ended
    workspace_id, key_id, key_name, plan, name = row
    return WebSession(
        Caller(workspace_id, Plan(plan), key_id, key_name=key_name),
        name,
        csrf_token(context.box, token),
    )


CurrentSession = Annotated[WebSession, Depends(current_session)]

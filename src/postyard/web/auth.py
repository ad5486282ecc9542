"""Sign in with a workspace API key, and sign out."""

from __future__ import annotations

import re
import secrets

from fastapi import APIRouter, Request, Response

from postyard.api.context import Context
from postyard.services.keys import Scope
from postyard.services.workspaces import authenticate
from postyard.web.common import CheckedForm, PageRoute, Posted, local_path, render, see_other
from postyard.web.session import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    SIGNIN_COOKIE,
    SIGNIN_SECONDS,
    SignInRequired,
    check_signin_csrf,
    clear_cookie,
    current_session,
    end_session,
    set_cookie,
    signin_csrf_token,
    start_session,
)

router = APIRouter(route_class=PageRoute, include_in_schema=False)

HOME = "/overview"
NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")


@router.get("/")
def home(request: Request, context: Context) -> Response:
    try:
        current_session(request, context)
    except SignInRequired:
        return see_other("/login")
    return see_other(HOME)


@router.get("/login")
def signin_page(request: Request, context: Context) -> Response:
    next_path = local_path(request.query_params.get("next"))
    if request.cookies.get(SESSION_COOKIE):
        try:
            current_session(request, context)
        except SignInRequired:
            pass
        else:
            return see_other(next_path or HOME)
    notice = None
    if request.query_params.get("signed_out"):
        notice = "You are signed out."
    elif request.query_params.get("expired"):
        notice = "Your session has ended, or its API key was revoked. Sign in again."
    return _signin_form(request, next_path=next_path, notice=notice)


@router.post("/login")
def sign_in(request: Request, form: Posted, context: Context) -> Response:
    next_path = local_path(form.get("next"))
    if not check_signin_csrf(
        context.box, request.cookies.get(SIGNIN_COOKIE), form.get("csrf_token", "")
    ):
        return _signin_form(
            request,
            next_path=next_path,
            status=403,
            error=(
                "The sign-in form expired, or your browser did not send its cookie back. "
                "Allow cookies for this site and try again."
            ),
        )
    api_key = form.get("api_key", "").strip()
    if not api_key:
        return _signin_form(
            request, next_path=next_path, status=422, error="Enter your workspace's API key."
        )
    with context.database.session() as session:
        caller = authenticate(session, api_key)
    if caller is None:
        return _signin_form(
            request,
            next_path=next_path,
            status=401,
            error="This API key is not valid or has been revoked.",
        )
    if caller.scope is not Scope.ADMIN:
        return _signin_form(
            request,
            next_path=next_path,
            status=403,
            error=(
                "This is a track key: it can only send people and events. "
                "Sign in with an admin key."
            ),
        )
    with context.database.session() as session:
        token = start_session(session, caller, context.clock())
    response = see_other(next_path or HOME)
    set_cookie(request, response, SESSION_COOKIE, token, SESSION_SECONDS)
    clear_cookie(request, response, SIGNIN_COOKIE)
    return response


@router.post("/logout")
def sign_out(request: Request, form: CheckedForm, context: Context) -> Response:
    """End the session in the database, not only in this browser: a copy of the cookie
    (another browser, a stolen one) is refused from now on."""
    with context.database.session() as session:
        end_session(session, request.cookies[SESSION_COOKIE], context.clock())
    response = see_other("/login?signed_out=1")
    clear_cookie(request, response, SESSION_COOKIE)
    return response


def _signin_form(
    request: Request,
    *,
    next_path: str | None,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
) -> Response:
    """The form, with a fresh nonce cookie that its CSRF token is bound to."""
    context = request.app.state.context
    # Kept across reloads, so that a second tab's form does not void the first one's.
    nonce = request.cookies.get(SIGNIN_COOKIE, "")
    if not NONCE.fullmatch(nonce):
        nonce = secrets.token_urlsafe(18)
    response = render(
        request,
        "signin.html",
        session=None,
        status=status,
        csrf_token=signin_csrf_token(context.box, nonce),
        next_path=next_path or "",
        error=error,
        notice=notice,
    )
    set_cookie(request, response, SIGNIN_COOKIE, nonce, SIGNIN_SECONDS)
    return response

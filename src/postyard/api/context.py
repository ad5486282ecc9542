"""What every request handler needs: settings, the database, the secret box, the caller.

The caller comes through one of two dependencies, which authenticate the key,
apply its rate limit, and check its scope:

- `CurrentCaller` (the default): an `admin` key only.
- `TrackCaller`: an `admin` or a `track` key. Only the Track-style endpoints
  take it (identify and delete a person, record an event, `/v1/batch`).

So a new endpoint is admin-only unless it asks for `TrackCaller` explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from postyard.api.rate_limit import RateLimiter, retry_after_seconds
from postyard.clock import Clock, utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.secretbox import SecretBox
from postyard.services.errors import Forbidden, RateLimited, Unauthorized
from postyard.services.keys import Scope
from postyard.services.runtime import Runtime
from postyard.services.workspaces import Caller, authenticate


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    database: Database
    box: SecretBox
    clock: Clock = utcnow
    rate_limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        limiter = RateLimiter(self.settings.api_rate_limit_per_minute)
        object.__setattr__(self, "rate_limiter", limiter)

    @property
    def runtime(self) -> Runtime:
        return Runtime(self.settings, self.box, self.clock)


def app_context(request: Request) -> AppContext:
    return request.app.state.context


def _authorised(request: Request, context: AppContext, scopes: frozenset[Scope]) -> Caller:
    scheme, _, api_key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not api_key.strip():
        raise Unauthorized("Send the workspace's API key as 'Authorization: Bearer <api key>'.")
    with context.database.session() as session:
        caller = authenticate(session, api_key.strip())
    if caller is None:
        raise Unauthorized("The API key is not valid or has been revoked.")
    wait = context.rate_limiter.acquire(caller.key_id)
    if wait is not None:
        raise RateLimited(
            f"This API key may make {context.rate_limiter.per_minute} requests a minute; "
            "retry after the time in the Retry-After header.",
            retry_after=retry_after_seconds(wait),
        )
    if caller.scope not in scopes:
        raise Forbidden(
            f"This is a {caller.scope.value} key: it may only identify and delete people, "
            f"record events and use /v1/batch. {request.method} {request.url.path} takes an "
            "admin key.",
            code="scope",
        )
    return caller


_ADMIN = frozenset({Scope.ADMIN})
_TRACK = frozenset({Scope.ADMIN, Scope.TRACK})


def current_caller(
    request: Request, context: Annotated[AppContext, Depends(app_context)]
) -> Caller:
    """The caller of an admin endpoint: every endpoint but the few that take `TrackCaller`."""
    return _authorised(request, context, _ADMIN)


def track_caller(request: Request, context: Annotated[AppContext, Depends(app_context)]) -> Caller:
    """The caller of a Track endpoint, which `track` keys may call too."""
    return _authorised(request, context, _TRACK)


def check_caller_first(request: Request) -> None:
    """Authenticate and check the scope as the matched endpoint's own dependency would.

    FastAPI decodes a JSON body before any dependency runs, so broken JSON would be answered
    ahead of a missing or wrong key. The answer about such a body calls this first: a caller
    without a valid key hears 401 whatever it sent (a `track` key on an admin endpoint, 403),
    never how its body would have been taken.
    """
    dependant = getattr(request.scope.get("route"), "dependant", None)
    for dependency in dependant.dependencies if dependant is not None else ():
        if dependency.call in {current_caller, track_caller}:
            dependency.call(request, app_context(request))


Context = Annotated[AppContext, Depends(app_context)]
CurrentCaller = Annotated[Caller, Depends(current_caller)]
TrackCaller = Annotated[Caller, Depends(track_caller)]

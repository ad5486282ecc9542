"""`/u/{token}`: the page an unsubscribe link opens, and the RFC 8058 one-click endpoint.

These are pages for the people mail goes to, not API calls: no API key, HTML
out, and every failure (a bad link, a wrong method, a body over the size limit,
an error of ours) answers with a page too, never with the API's JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute

from postyard.api.context import Context
from postyard.services.subscriptions import Subscriber, look_up, unsubscribe
from postyard.services.unsubscribe import read_token
from postyard.web.templating import environment

log = logging.getLogger(__name__)

PREFIX = "/u/"
# `:path` so that a link mangled on its way (a slash added, say) still gets a page.
PATH = PREFIX + "{token:path}"

# One Jinja2 environment for every page Postyard serves (the admin UI's as well).
_templates = environment

# No scripts, no framing, nothing cached or indexed, and the token in the URL
# never sent on as a referrer.
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex",
}

_ERRORS = {
    404: (
        "Link not recognised",
        "This unsubscribe link is not valid. It may have been cut short on its way: "
        "open it again from the email.",
    ),
    405: ("Not allowed", "This page can be opened, and its button pressed; nothing else."),
    413: ("Request too large", "The request was larger than this page accepts."),
    500: ("Something went wrong", "Your request could not be completed. Please try again later."),
}


def page(template: str, status: int = 200, **values: object) -> HTMLResponse:
    return HTMLResponse(
        _templates.get_template(template).render(values), status_code=status, headers=_HEADERS
    )


def error_page(status: int) -> HTMLResponse:
    """The page for an error status; the body-size limit answers with it under `PREFIX`."""
    title, message = _ERRORS[status]
    return page("error.html", status, title=title, message=message)


def mask(email: str | None) -> str | None:
    """`jane@example.com` → `j***@example.com`: enough for its owner to recognise it,
    too little to harvest from a forwarded or leaked link."""
    if not email:
        return None
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}***@{domain}" if local else "***"


class PageRoute(APIRoute):
    """A route that answers an unexpected error with a page, where the app's handler
    would answer with JSON."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handle = super().get_route_handler()

        async def handle_as_page(request: Request) -> Response:
            try:
                return await handle(request)
            except Exception:
                # The path holds the token, a credential of sorts: it stays out of the log.
                log.exception("unexpected error on %s of an unsubscribe page", request.method)
                return error_page(500)

        return handle_as_page


router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.api_route(PATH, methods=["GET", "HEAD"])
def confirmation_page(token: str, context: Context) -> HTMLResponse:
    """Ask before unsubscribing: link scanners and prefetchers open links, they do not POST."""
    link = read_token(context.box, token)
    if link is None:
        return error_page(404)
    with context.database.session() as session:
        subscriber = look_up(session, link)
    if subscriber is None or subscriber.unsubscribed:
        return _done(subscriber)
    return page("unsubscribe.html", address=mask(subscriber.email), sender=subscriber.sender)


@router.post(PATH)
def unsubscribe_now(token: str, context: Context) -> HTMLResponse:
    """The page's button and RFC 8058 one-click alike.

    The body (`List-Unsubscribe=One-Click` from a mail client, nothing from the
    page's form) is not read: the signed link alone says who unsubscribes, so the
    POST needs no cookie, session or CSRF token, as RFC 8058 requires.
    """
    link = read_token(context.box, token)
    if link is None:
        return error_page(404)
    with context.database.session() as session:
        subscriber = unsubscribe(session, context.runtime, link)
    return _done(subscriber)


@router.api_route(PATH, methods=["PUT", "PATCH", "DELETE", "OPTIONS"])
def other_methods() -> HTMLResponse:
    """Answered here rather than by the router, whose 405 is the API's JSON."""
    response = error_page(405)
    response.headers["Allow"] = "GET, HEAD, POST"
    return response


def _done(subscriber: Subscriber | None) -> HTMLResponse:
    """The confirmation; for a person who is gone it says the same as for one who
    unsubscribed, which reveals nothing about the link or the workspace."""
    if subscriber is None:
        return page("unsubscribed.html", address=None, sender=None)
    return page("unsubscribed.html", address=mask(subscriber.email), sender=subscriber.sender)

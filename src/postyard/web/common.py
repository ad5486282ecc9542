"""What every page of the admin UI shares: rendering, form bodies, CSRF, error pages."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from postyard.services.errors import NotFound
from postyard.web.session import CsrfFailed, CurrentSession, SignInRequired, WebSession
from postyard.web.templating import templates

log = logging.getLogger(__name__)

# No scripts, styles from our own file, forms only to ourselves, never framed.
POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# A page that enhances itself (`render(script=...)`) may load scripts from our static
# folder, never inline, and call back only to us.
SCRIPTED_POLICY = POLICY + "; script-src 'self'; connect-src 'self'"
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": POLICY,
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex",
}

MAX_FORM_FIELDS = 100


class PageNotFound(Exception):
    """Answered with the 404 page: an object that is not there, or not this workspace's."""


class BadForm(Exception):
    """A POST body that is not a form at all."""


def render(
    request: Request,
    template: str,
    *,
    session: WebSession | None,
    status: int = 200,
    script: str | None = None,
    **values: Any,
) -> HTMLResponse:
    """The page; `script` names a file of `static/` that enhances it (the page must work
    without it), allowed by the page's policy and by no other page's."""
    values.setdefault("notice", None)
    values.setdefault("nav", None)
    values.setdefault("refresh_seconds", None)
    context = {
        "session": session,
        "csrf_token": session.csrf_token if session else values.pop("csrf_token", ""),
        "script": script,
        **values,
    }
    headers = HEADERS if script is None else {**HEADERS, "Content-Security-Policy": SCRIPTED_POLICY}
    response = templates.TemplateResponse(
        request, f"admin/{template}", context, status_code=status, headers=headers
    )
    return response  # type: ignore[return-value]


def see_other(location: str) -> RedirectResponse:
    """The answer to a POST that worked: the browser fetches the result with a GET."""
    return RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})


def error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return render(request, "error.html", session=None, status=status, title=title, message=message)


def not_found_page(request: Request) -> HTMLResponse:
    return error_page(
        request,
        404,
        "Not found",
        "There is nothing here in your workspace. The link may be out of date, or the "
        "object may have been deleted.",
    )


def local_path(target: str | None) -> str | None:
    """`target` if it is a path on this site; never another site (`//evil`, `https://…`)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


def signin_redirect(request: Request, reason: str | None) -> RedirectResponse:
    target = "/login"
    query = []
    if request.method == "GET" and request.url.path not in {"/", "/login"}:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        query.append("next=" + quote(path, safe=""))
    if reason:
        query.append("expired=1")
    if query:
        target += "?" + "&".join(query)
    return see_other(target)


class PageRoute(APIRoute):
    """A route that answers every failure with a page: sign-in, 404, 403 or 500, never JSON."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handle = super().get_route_handler()

        async def handle_page(request: Request) -> Response:
            try:
                return await handle(request)
            except SignInRequired as needed:
                return signin_redirect(request, needed.reason)
            except (PageNotFound, NotFound, RequestValidationError):
                # A malformed id in the path is as absent as an id of another workspace.
                return not_found_page(request)
            except CsrfFailed:
                return error_page(
                    request,
                    403,
                    "Form expired",
                    "This form was opened in another session, or too long ago. "
                    "Go back, reload the page and try again.",
                )
            except BadForm:
                return error_page(request, 400, "Bad request", "The form could not be read.")
            except Exception:
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                return error_page(
                    request,
                    500,
                    "Something went wrong",
                    "The request could not be completed. Nothing was changed unless the "
                    "page you come back to shows it.",
                )

        return handle_page


async def read_form(request: Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body as a dict; the first value of a name wins."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise BadForm()
    body = (await request.body()).decode("utf-8", "replace")
    try:
        pairs = parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise BadForm() from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


Posted = Annotated[dict[str, str], Depends(read_form)]


def checked_form(session: CurrentSession, form: Posted) -> dict[str, str]:
    """The posted form of a signed-in session, once its CSRF token is checked."""
    token = form.get("csrf_token", "")
    if not hmac.compare_digest(session.csrf_token.encode(), token.encode("utf-8", "replace")):
        raise CsrfFailed()
    return form


CheckedForm = Annotated[dict[str, str], Depends(checked_form)]


def delete_confirmation(
    request: Request,
    web: WebSession,
    *,
    section: str,
    label: str,
    object_id: int,
    name: str,
    consequences: list[str],
    error: str | None = None,
    status: int = 200,
) -> Response:
    """The page that asks before deleting a campaign or a segment, saying what goes and what
    stays, and why a refused delete was refused."""
    return render(
        request,
        "confirm_delete.html",
        session=web,
        status=status,
        nav=section,
        name=name,
        list_url=f"/{section}",
        list_label=label,
        back_url=f"/{section}/{object_id}",
        action=f"/{section}/{object_id}/delete",
        error=error,
        consequences=consequences,
    )

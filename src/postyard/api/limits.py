"""Refuse request bodies over the configured size before any handler parses them."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postyard.api.errors import error_response

ErrorPage = Callable[[int], Response]


class BodySizeLimit:
    """Reads the body up to the limit, then hands it on; one byte more is a 413.

    The 413 is the API's JSON error, but for paths under a prefix of `pages`:
    HTML pages for people answer with that prefix's error page instead.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, pages: Mapping[str, ErrorPage] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.pages = dict(pages or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        too_large = declared.isdigit() and int(declared) > self.max_bytes
        body = b""
        more = True
        while more and not too_large:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            too_large = len(body) > self.max_bytes
        if too_large:
            await self._too_large(scope["path"])(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self, path: str) -> Response:
        for prefix, error_page in self.pages.items():
            if path.startswith(prefix):
                return error_page(413)
        return error_response(
            413,
            "payload_too_large",
            f"The request body is larger than the limit of {self.max_bytes} bytes.",
        )

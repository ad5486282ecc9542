"""Every error leaves the API as `{"error": {"code", "message"}}` with a 4xx status.

Unexpected exceptions become a 500 with no detail in the body: the traceback
goes to the log, which never holds secrets, and nothing of it to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from postyard.api.context import check_caller_first
from postyard.routing import PlanLimit, RuleViolation
from postyard.services.errors import ServiceError

log = logging.getLogger(__name__)

# FastAPI raises a bare 400 only when it cannot decode the body (invalid UTF-8, nesting too deep).
HTTP_CODES = {
    400: "malformed_json",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


# Declared for every operation, so that the OpenAPI document describes the 4xx answers the
# API really sends (FastAPI would otherwise declare only a 422 of its own `{"detail"}` shape).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": 'Client error: `{"error": {"code", "message"}}`'}
}


def error_response(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def answer_browsers_with(app: FastAPI, not_found_page: Callable[[Request], Response]) -> None:
    """Answer a browser's unknown path outside `/v1` with `not_found_page` (the admin UI's)
    rather than JSON; the API keeps its JSON 404 whatever the client accepts."""
    app.state.not_found_page = not_found_page


def _wants_page(request: Request) -> bool:
    path = request.url.path
    api = path == "/v1" or path.startswith("/v1/")
    return not api and "text/html" in request.headers.get("accept", "")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, error: ServiceError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, **error.headers)

    @app.exception_handler(RuleViolation)
    async def rule_violation(_: Request, error: RuleViolation) -> JSONResponse:
        status = 403 if isinstance(error, PlanLimit) else 409
        return error_response(status, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        if any(problem["type"] == "json_invalid" for problem in problems):
            return await _caller_refusal(request) or _malformed_json()
        if any(_is_unparsed_body(problem) for problem in problems):
            return _malformed_json()
        return error_response(
            422, "invalid_request", "; ".join(_describe(problem) for problem in problems)
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        page = getattr(request.app.state, "not_found_page", None)
        if error.status_code == 404 and page is not None and _wants_page(request):
            return page(request)
        if error.status_code == 400:  # an undecodable body: found before any dependency ran
            refusal = await _caller_refusal(request)
            if refusal is not None:
                return refusal
        code = HTTP_CODES.get(error.status_code, "http_error")
        message = str(error.detail)
        if error.status_code in {404, 405} and message in {"Not Found", "Method Not Allowed"}:
            message = f"There is no endpoint {request.method} {request.url.path}."
        return error_response(error.status_code, code, message)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "Something went wrong on our side.")


async def _caller_refusal(request: Request) -> JSONResponse | None:
    """The 401, 403 or 429 the endpoint would answer before reading its body, if any."""
    try:
        await run_in_threadpool(check_caller_first, request)
    except ServiceError as refused:
        return error_response(refused.status, refused.code, refused.message, **refused.headers)
    return None


def _malformed_json() -> JSONResponse:
    return error_response(
        400,
        "malformed_json",
        "The request body is not valid JSON (Content-Type: application/json).",
    )


def _is_unparsed_body(problem: dict[str, Any]) -> bool:
    """Broken JSON, or a body sent without a JSON content type, which arrives as raw bytes."""
    raw_body = tuple(problem["loc"]) == ("body",) and isinstance(problem.get("input"), bytes)
    return problem["type"] == "json_invalid" or raw_body


_SOURCES = {"body", "query", "path"}


def _describe(problem: dict[str, Any]) -> str:
    """One problem as a person would say it: where, then what."""
    location = ".".join(str(part) for part in problem["loc"] if part not in _SOURCES)
    if problem["type"] == "extra_forbidden":
        return f"unknown field '{location}'"
    message = str(problem["msg"]).removeprefix("Value error, ")
    return f"{location}: {message}" if location else message

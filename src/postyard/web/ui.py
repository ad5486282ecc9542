"""Mount the admin web UI on the app: its pages, its static files, and its 404 page."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from postyard.api.errors import answer_browsers_with
from postyard.web import audit, auth, campaigns, deliveries, overview, people, segments, smtp
from postyard.web.common import not_found_page

STATIC = Path(__file__).parent / "static"


def install_ui(app: FastAPI) -> None:
    for module in (auth, smtp, deliveries, overview, campaigns, segments, people, audit):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    answer_browsers_with(app, not_found_page)

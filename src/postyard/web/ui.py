"""Mount the admin web UI on the app: its pages and its stylesheet."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from postyard.web import auth, campaigns, deliveries, overview, people, segments, smtp

STATIC = Path(__file__).parent / "static"


def install_ui(app: FastAPI) -> None:
    for module in (auth, smtp, deliveries, overview, campaigns, segments, people):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

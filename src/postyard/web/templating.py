"""The one Jinja2 environment for every HTML page Postyard serves.

The admin UI's templates live under `templates/admin/`; the pages for the
people mail goes to (unsubscribe) sit at the top of `templates/`. Both render
through this environment: autoescaped, and strict about undefined names, so a
template that refers to a value the handler did not pass fails in the tests
rather than printing nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, StrictUndefined

environment = Environment(
    loader=PackageLoader("postyard", "web/templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

templates = Jinja2Templates(env=environment)


def utc(moment: datetime | None) -> str:
    """A stored (naive, UTC) moment as people read it: `2024-05-01 14:03:09 UTC`."""
    if moment is None:
        return "—"
    return moment.replace(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(moment: datetime | None) -> str:
    """The machine-readable form for `<time datetime=…>`."""
    return "" if moment is None else moment.replace(tzinfo=UTC).isoformat()


def duration(seconds: float | None) -> str:
    """`42 s`, `5 min`, `3 h 20 min`, `2 d 4 h`: precise enough to judge a queue's age."""
    if seconds is None:
        return "—"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


environment.filters["utc"] = utc
environment.filters["iso"] = iso
environment.filters["duration"] = duration

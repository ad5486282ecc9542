"""Campaigns that start on their own: a person entering a segment, an event arriving.

Interface for the people and segments use cases; the campaigns work fills it in.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from postyard.db.models import Person, PersonEvent
from postyard.services.runtime import Runtime


def on_segment_entries(
    session: Session, runtime: Runtime, person: Person, segment_ids: Sequence[int]
) -> None:
    """`person` has just entered each of `segment_ids`: queue their segment-triggered mail."""


def on_event(session: Session, runtime: Runtime, person: Person, event: PersonEvent) -> None:
    """`event` was recorded for `person`: queue the event-triggered mail it matches."""

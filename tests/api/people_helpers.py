"""Plain helpers shared by the people, segments and batch API tests."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from postyard.db.engine import Database
from postyard.db.models import Person, PersonEvent, SegmentMember

START = datetime(2026, 3, 1, 9, 30)


@dataclasses.dataclass
class FakeClock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def stored(database: Database, client: TestClient) -> tuple[list[tuple], list[tuple], int]:
    """Every person and event of the client's workspace, and its memberships."""
    workspace_id = client.workspace_id  # type: ignore[attr-defined]
    with database.session() as session:
        people = session.execute(
            select(Person.__table__).where(Person.workspace_id == workspace_id).order_by(Person.id)
        ).all()
        events = session.execute(
            select(PersonEvent.__table__)
            .where(PersonEvent.workspace_id == workspace_id)
            .order_by(PersonEvent.id)
        ).all()
        members = session.scalar(
            select(func.count())
            .select_from(SegmentMember)
            .join(Person, Person.id == SegmentMember.person_pk)
            .where(Person.workspace_id == workspace_id)
        )
    return [tuple(p) for p in people], [tuple(e) for e in events], members or 0

"""Campaigns that start on their own: a person entering a segment, an event arriving.

The people and segments use cases call these in their own transaction, so the
mail a change triggers is queued if and only if the change is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from postyard.conditions import Facts, parse
from postyard.db.models import Campaign, Person, PersonEvent
from postyard.routing import CampaignType
from postyard.services import fanout
from postyard.services.campaigns import Frequency, State
from postyard.services.runtime import Runtime


def on_segment_entries(
    session: Session, runtime: Runtime, person: Person, segment_ids: Sequence[int]
) -> None:
    """`person` has just entered each of `segment_ids`: queue their segment-triggered mail.

    Once per person per campaign, unless the campaign has `re_entry`: then on every entry.
    """
    entered = set(segment_ids)
    campaigns = [
        campaign
        for campaign in _active(session, person.workspace_id, CampaignType.SEGMENT_TRIGGERED)
        if campaign.trigger and campaign.trigger.get("segment_id") in entered
    ]
    letters = [
        fanout.Composer.of(campaign, runtime).letter(person)
        for campaign in campaigns
        if (campaign.options or {}).get("re_entry") or not _has_had(session, campaign, person)
    ]
    fanout.enqueue(session, runtime, person.workspace_id, letters)


def on_event(session: Session, runtime: Runtime, person: Person, event: PersonEvent) -> None:
    """`event` was recorded for `person`: queue the event-triggered mail it matches.

    Every matching event sends, unless the campaign's frequency is `once`: then
    once per person ever. The campaign's filter looks at the event's data.
    """
    facts = Facts(attributes=event.data, events={}, now=runtime.clock())
    variables = {"event": fanout.event_variables(event)}
    letters = []
    for campaign in _active(session, person.workspace_id, CampaignType.EVENT_TRIGGERED):
        trigger = campaign.trigger or {}
        if trigger.get("event_name") != event.name:
            continue
        if "filter" in trigger and not parse(trigger["filter"], allow_events=False).holds(facts):
            continue
        once = (campaign.options or {}).get("frequency") == Frequency.ONCE
        if once and _has_had(session, campaign, person):
            continue
        letters.append(fanout.Composer.of(campaign, runtime).letter(person, variables))
    fanout.enqueue(session, runtime, person.workspace_id, letters)


def _active(session: Session, workspace_id: int, campaign_type: CampaignType) -> list[Campaign]:
    return list(
        session.scalars(
            select(Campaign).where(
                Campaign.workspace_id == workspace_id,
                Campaign.type == campaign_type.value,
                Campaign.state == State.ACTIVE.value,
            )
        )
    )


def _has_had(session: Session, campaign: Campaign, person: Person) -> bool:
    return bool(fanout.already_sent(session, campaign.id, [person.person_id]))

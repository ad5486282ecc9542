"""The words a delivery's `route_reason` uses for each way a route can go (no I/O)."""

from __future__ import annotations

import pytest

from postyard.db.models import Delivery
from postyard.routing import Via
from postyard.services.route_reasons import NOT_ROUTED, RouteReasons, route_reason


@pytest.mark.parametrize(
    ("via", "expected"),
    [
        (Via.SPECIFIC, "specific: 'smtp-news' was the server set to Newsletters"),
        (
            Via.FALLBACK,
            "fallback: no server was set to Newsletters, so it went to 'smtp-news', "
            "the primary All Emails server",
        ),
        (
            Via.FAILOVER,
            "failover: the server set to Newsletters was unreachable, so it went to "
            "'smtp-news', the primary All Emails server",
        ),
        (Via.DEFAULT_RELAY, "default relay: the workspace had no SMTP server of its own"),
    ],
)
def test_each_way_of_routing_has_its_words(via: Via, expected: str) -> None:
    assert route_reason(via.value, "newsletter", "'smtp-news'", no_route=False) == expected


def test_every_way_of_routing_is_worded() -> None:
    for via in Via:
        assert route_reason(via.value, "newsletter", "'x'", no_route=False) != NOT_ROUTED


def test_a_message_without_a_route_says_whether_it_found_none_or_is_yet_to_be_tried() -> None:
    assert route_reason(None, "newsletter", "", no_route=False) == NOT_ROUTED
    assert route_reason(None, "newsletter", "", no_route=True).startswith("no route: ")


def test_a_server_deleted_since_is_named_by_its_id() -> None:
    delivery = Delivery(
        campaign_type="event_triggered", smtp_server_id=7, route_via="specific", last_error=None
    )

    reason = RouteReasons({3: "smtp-main"}).of_delivery(delivery)

    assert reason == "specific: server #7 (deleted since) was the server set to Event Triggered"

"""The routing rules R1-R7 (DESIGN §2) as pure functions: no database, no network."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from postyard.routing import (
    SERVING_ROLE,
    SPECIFIC_ROLES,
    CampaignType,
    FallbackRequired,
    Plan,
    PlanLimit,
    Role,
    RoleTaken,
    Route,
    RuleViolation,
    Server,
    Via,
    check_delete,
    check_plan_allows_another,
    check_role_change,
    check_servers,
    default_role,
    primary_fallback,
    resolve,
    routing_table,
)

SEG = CampaignType.SEGMENT_TRIGGERED
EVT = CampaignType.EVENT_TRIGGERED
NEWS = CampaignType.NEWSLETTER
BCAST = CampaignType.TRIGGERED_BROADCAST


def srv(server_id: int, role: Role, name: str | None = None, position: int | None = None) -> Server:
    """A server snapshot; position defaults to the id (creation order)."""
    return Server(
        server_id, name or f"s{server_id}", role, server_id if position is None else position
    )


def by_name(servers: Sequence[Server], name: str) -> Server:
    return next(s for s in servers if s.name == name)


def with_role(servers: Sequence[Server], server_id: int, role: Role) -> list[Server]:
    return [srv(s.id, role, s.name, s.position) if s.id == server_id else s for s in servers]


# --- R1: plan caps ---------------------------------------------------------------------------


def test_plan_caps_are_one_for_standard_and_twenty_for_premium() -> None:
    assert Plan.STANDARD.server_limit == 1
    assert Plan.PREMIUM.server_limit == 20


@pytest.mark.parametrize(
    ("plan", "existing"),
    [(Plan.STANDARD, 0), (Plan.PREMIUM, 0), (Plan.PREMIUM, 1), (Plan.PREMIUM, 19)],
)
def test_adding_a_server_below_the_plan_cap_is_allowed(plan: Plan, existing: int) -> None:
    check_plan_allows_another(plan, existing)


@pytest.mark.parametrize(
    ("plan", "existing"),
    [(Plan.STANDARD, 1), (Plan.STANDARD, 2), (Plan.PREMIUM, 20), (Plan.PREMIUM, 21)],
)
def test_adding_a_server_at_the_plan_cap_is_refused_with_plan_limit(
    plan: Plan, existing: int
) -> None:
    with pytest.raises(PlanLimit) as refused:
        check_plan_allows_another(plan, existing)
    assert refused.value.code == "plan_limit"
    assert plan.value in refused.value.message
    assert str(plan.server_limit) in refused.value.message


def test_rule_violations_carry_distinct_api_codes() -> None:
    assert issubclass(PlanLimit, RuleViolation)
    assert issubclass(FallbackRequired, RuleViolation)
    assert issubclass(RoleTaken, RuleViolation)
    assert {PlanLimit.code, FallbackRequired.code, RoleTaken.code} == {
        "plan_limit",
        "fallback_required",
        "role_taken",
    }


# --- R2: default roles -----------------------------------------------------------------------


def test_first_server_defaults_to_all_emails() -> None:
    assert default_role([]) == Role.ALL_EMAILS


@pytest.mark.parametrize(
    "existing",
    [
        [srv(1, Role.ALL_EMAILS)],
        [srv(1, Role.ALL_EMAILS), srv(2, Role.NEWSLETTERS)],
        [srv(1, Role.ALL_EMAILS), srv(2, Role.NONE), srv(3, Role.ALL_EMAILS)],
    ],
)
def test_later_servers_default_to_none(existing: list[Server]) -> None:
    assert default_role(existing) == Role.NONE


def test_a_new_first_server_with_its_default_role_passes_the_rules() -> None:
    new = Server(None, "first", default_role([]), 1)
    check_servers([new], new)


def test_a_new_first_server_with_a_specific_role_is_refused_for_want_of_a_fallback() -> None:
    new = Server(None, "news", Role.NEWSLETTERS, 1)
    with pytest.raises(FallbackRequired) as refused:
        check_servers([new], new)
    assert "the new server 'news'" in refused.value.message.lower()


def test_a_new_server_asking_for_a_held_role_is_refused_naming_the_holder() -> None:
    existing = [srv(1, Role.ALL_EMAILS, "main"), srv(2, Role.NEWSLETTERS, "news")]
    new = Server(None, "news-2", Role.NEWSLETTERS, 3)
    with pytest.raises(RoleTaken) as refused:
        check_servers([*existing, new], new)
    assert "server 'news' (id 2)" in refused.value.message


# --- R3: a fallback always exists --------------------------------------------------------------


@pytest.mark.parametrize(
    "role", [Role.NONE, *sorted(SPECIFIC_ROLES - {Role.EVENT_TRIGGERED}, key=str)]
)
def test_changing_the_only_all_emails_server_away_from_all_emails_is_refused_naming_it(
    role: Role,
) -> None:
    servers = [srv(1, Role.ALL_EMAILS, "main"), srv(2, Role.EVENT_TRIGGERED, "events")]
    with pytest.raises(FallbackRequired) as refused:
        check_role_change(servers, 1, role)
    assert refused.value.code == "fallback_required"
    assert "server 'main' (id 1)" in refused.value.message.lower()
    assert role.label in refused.value.message


def test_changing_one_of_two_all_emails_servers_to_none_is_allowed() -> None:
    servers = [srv(1, Role.ALL_EMAILS), srv(2, Role.ALL_EMAILS)]
    check_role_change(servers, 1, Role.NONE)
    check_role_change(servers, 2, Role.NONE)


def test_changing_the_only_server_away_from_all_emails_is_refused() -> None:
    with pytest.raises(FallbackRequired):
        check_role_change([srv(1, Role.ALL_EMAILS, "only")], 1, Role.NONE)


def test_deleting_the_only_all_emails_server_is_refused_while_others_remain() -> None:
    servers = [
        srv(1, Role.ALL_EMAILS, "main"),
        srv(2, Role.NEWSLETTERS, "news"),
        srv(3, Role.NONE, "spare"),
    ]
    with pytest.raises(FallbackRequired) as refused:
        check_delete(servers, 1)
    assert refused.value.code == "fallback_required"
    assert "server 'main' (id 1)" in refused.value.message.lower()


def test_deleting_the_last_remaining_server_is_allowed() -> None:
    check_delete([srv(1, Role.ALL_EMAILS, "main")], 1)


def test_deleting_one_of_two_all_emails_servers_is_allowed() -> None:
    servers = [srv(1, Role.ALL_EMAILS), srv(2, Role.ALL_EMAILS), srv(3, Role.NEWSLETTERS)]
    check_delete(servers, 1)
    check_delete(servers, 2)


@pytest.mark.parametrize("role", [Role.NONE, *sorted(SPECIFIC_ROLES, key=str)])
def test_deleting_a_server_that_is_not_the_fallback_is_allowed(role: Role) -> None:
    check_delete([srv(1, Role.ALL_EMAILS), srv(2, role)], 2)


def test_deleting_an_unknown_server_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        check_delete([srv(1, Role.ALL_EMAILS)], 99)


# --- R4: one server per specific role --------------------------------------------------------


@pytest.mark.parametrize("role", sorted(SPECIFIC_ROLES, key=str))
def test_assigning_a_held_specific_role_is_refused_naming_the_holder(role: Role) -> None:
    servers = [srv(1, Role.ALL_EMAILS, "main"), srv(2, role, "holder"), srv(3, Role.NONE, "new")]
    with pytest.raises(RoleTaken) as refused:
        check_role_change(servers, 3, role)
    assert refused.value.code == "role_taken"
    assert "server 'holder' (id 2)" in refused.value.message
    assert role.label in refused.value.message


def test_reassigning_a_server_its_own_specific_role_is_allowed() -> None:
    servers = [srv(1, Role.ALL_EMAILS), srv(2, Role.NEWSLETTERS)]
    check_role_change(servers, 2, Role.NEWSLETTERS)


def test_several_all_emails_servers_are_allowed() -> None:
    servers = [srv(1, Role.ALL_EMAILS), srv(2, Role.ALL_EMAILS), srv(3, Role.NONE)]
    check_role_change(servers, 3, Role.ALL_EMAILS)
    new = Server(None, "fourth", Role.ALL_EMAILS, 4)
    check_servers([*servers, new], new)


def test_primary_fallback_is_the_first_all_emails_server_by_position_not_by_id() -> None:
    servers = [
        srv(1, Role.ALL_EMAILS, "older", position=3),
        srv(2, Role.NONE, "spare", position=1),
        srv(3, Role.ALL_EMAILS, "moved-up", position=2),
    ]
    primary = primary_fallback(servers)
    assert primary is not None
    assert primary.name == "moved-up"
    assert resolve(servers, SEG).server == primary


def test_primary_fallback_follows_creation_order_when_positions_tie() -> None:
    servers = [srv(2, Role.ALL_EMAILS, "second", position=1), srv(1, Role.ALL_EMAILS, "first", 1)]
    primary = primary_fallback(servers)
    assert primary is not None
    assert primary.name == "first"


def test_there_is_no_primary_fallback_without_an_all_emails_server() -> None:
    assert primary_fallback([]) is None
    assert primary_fallback([srv(1, Role.NONE)]) is None


# --- R5: resolution --------------------------------------------------------------------------


@pytest.mark.parametrize("campaign_type", list(CampaignType))
def test_a_type_goes_to_the_server_set_to_its_role(campaign_type: CampaignType) -> None:
    servers = [srv(1, Role.ALL_EMAILS, "main"), srv(2, campaign_type.role, "own")]
    route = resolve(servers, campaign_type)
    assert route.server is not None
    assert route.server.name == "own"
    assert route.via == Via.SPECIFIC
    assert route.campaign_type == campaign_type


@pytest.mark.parametrize("campaign_type", list(CampaignType))
def test_a_type_without_its_own_server_goes_to_the_primary_fallback(
    campaign_type: CampaignType,
) -> None:
    others = sorted(SPECIFIC_ROLES - {campaign_type.role}, key=str)
    servers = [
        srv(1, Role.NONE, "idle"),
        srv(2, Role.ALL_EMAILS, "primary"),
        srv(3, Role.ALL_EMAILS, "secondary"),
        *(srv(10 + i, role, f"other-{role}") for i, role in enumerate(others)),
    ]
    route = resolve(servers, campaign_type)
    assert route.server is not None
    assert route.server.name == "primary"
    assert route.via == Via.FALLBACK


@pytest.mark.parametrize("campaign_type", list(CampaignType))
def test_a_none_server_never_carries_any_type(campaign_type: CampaignType) -> None:
    servers = [srv(1, Role.NONE, "idle", position=1), srv(2, Role.ALL_EMAILS, "main", 2)]
    route = resolve(servers, campaign_type)
    assert route.server is not None
    assert route.server.name == "main"


@pytest.mark.parametrize("has_default_relay", [True, False])
def test_custom_servers_take_precedence_over_the_default_relay(has_default_relay: bool) -> None:
    route = resolve([srv(1, Role.ALL_EMAILS, "main")], NEWS, has_default_relay)
    assert route.server is not None
    assert route.via == Via.FALLBACK


def test_route_explanations_use_the_words_of_the_ui() -> None:
    servers = [srv(1, Role.ALL_EMAILS, "smtp-main"), srv(2, Role.NEWSLETTERS, "smtp-news")]
    assert resolve(servers, SEG).explanation == "fallback: no server is set to Segment Triggered"
    assert resolve(servers, NEWS).explanation == "specific: 'smtp-news' is set to Newsletters"


# --- Every role transition -------------------------------------------------------------------

ALL, NONE_ = Role.ALL_EMAILS, Role.NONE
R_SEG, R_EVT, R_NEWS, R_BCAST = (
    Role.SEGMENT_TRIGGERED,
    Role.EVENT_TRIGGERED,
    Role.NEWSLETTERS,
    Role.TRIGGERED_BROADCASTS,
)
SUBJECT_ID, EVENTS_ID, MAIN_ID = 3, 2, 1


def transition_workspace(from_role: Role) -> list[Server]:
    """The subject server (id 3) with `from_role`, in a representative workspace.

    'events' holds Event Triggered unless the subject does; 'main' is All Emails
    unless the subject is, in which case the subject is the only fallback.
    """
    servers = [srv(SUBJECT_ID, from_role, "subject")]
    if from_role != R_EVT:
        servers.append(srv(EVENTS_ID, R_EVT, "events"))
    if from_role != ALL:
        servers.append(srv(MAIN_ID, ALL, "main"))
    return servers


# (from_role, to_role, expected error or None when allowed)
TRANSITIONS: list[tuple[Role, Role, type[RuleViolation] | None]] = [
    # The subject is the only All Emails server: leaving All Emails breaks R3;
    # asking for the held role breaks R4 as well, and R4 is reported.
    (ALL, ALL, None),
    (ALL, NONE_, FallbackRequired),
    (ALL, R_SEG, FallbackRequired),
    (ALL, R_EVT, RoleTaken),
    (ALL, R_NEWS, FallbackRequired),
    (ALL, R_BCAST, FallbackRequired),
    # 'main' remains the fallback, so only the held Event Triggered role is refused.
    (NONE_, ALL, None),
    (NONE_, NONE_, None),
    (NONE_, R_SEG, None),
    (NONE_, R_EVT, RoleTaken),
    (NONE_, R_NEWS, None),
    (NONE_, R_BCAST, None),
    (R_SEG, ALL, None),
    (R_SEG, NONE_, None),
    (R_SEG, R_SEG, None),
    (R_SEG, R_EVT, RoleTaken),
    (R_SEG, R_NEWS, None),
    (R_SEG, R_BCAST, None),
    # The subject holds Event Triggered itself: every move is allowed.
    (R_EVT, ALL, None),
    (R_EVT, NONE_, None),
    (R_EVT, R_SEG, None),
    (R_EVT, R_EVT, None),
    (R_EVT, R_NEWS, None),
    (R_EVT, R_BCAST, None),
    (R_NEWS, ALL, None),
    (R_NEWS, NONE_, None),
    (R_NEWS, R_SEG, None),
    (R_NEWS, R_EVT, RoleTaken),
    (R_NEWS, R_NEWS, None),
    (R_NEWS, R_BCAST, None),
    (R_BCAST, ALL, None),
    (R_BCAST, NONE_, None),
    (R_BCAST, R_SEG, None),
    (R_BCAST, R_EVT, RoleTaken),
    (R_BCAST, R_NEWS, None),
    (R_BCAST, R_BCAST, None),
]


def test_the_transition_table_covers_every_pair_of_roles_once() -> None:
    pairs = [(from_role, to_role) for from_role, to_role, _ in TRANSITIONS]
    assert len(pairs) == len(set(pairs)) == len(Role) ** 2


@pytest.mark.parametrize(
    ("from_role", "to_role", "error"),
    TRANSITIONS,
    ids=[f"{f.value}->{t.value}" for f, t, _ in TRANSITIONS],
)
def test_role_transition(from_role: Role, to_role: Role, error: type[RuleViolation] | None) -> None:
    servers = transition_workspace(from_role)
    if error is None:
        check_role_change(servers, SUBJECT_ID, to_role)
        # An allowed change leaves a workspace that still routes every type somewhere.
        after = with_role(servers, SUBJECT_ID, to_role)
        assert all(resolve(after, t).server is not None for t in CampaignType)
        return
    with pytest.raises(error) as refused:
        check_role_change(servers, SUBJECT_ID, to_role)
    assert type(refused.value) is error
    named = "server 'events' (id 2)" if error is RoleTaken else "server 'subject' (id 3)"
    assert named in refused.value.message.lower()


# --- DESIGN §8: the routing example ------------------------------------------------------------

SEED = [
    srv(1, Role.ALL_EMAILS, "smtp-1"),
    srv(2, Role.EVENT_TRIGGERED, "smtp-2"),
    srv(3, Role.NEWSLETTERS, "smtp-3"),
]
SEED_AFTER_3_IS_NONE = with_role(SEED, 3, Role.NONE)


@pytest.mark.parametrize(
    ("servers", "campaign_type", "expected_name", "expected_via"),
    [
        (SEED, SEG, "smtp-1", Via.FALLBACK),
        (SEED, EVT, "smtp-2", Via.SPECIFIC),
        (SEED, NEWS, "smtp-3", Via.SPECIFIC),
        (SEED, BCAST, "smtp-1", Via.FALLBACK),
        (SEED_AFTER_3_IS_NONE, SEG, "smtp-1", Via.FALLBACK),
        (SEED_AFTER_3_IS_NONE, EVT, "smtp-2", Via.SPECIFIC),
        (SEED_AFTER_3_IS_NONE, NEWS, "smtp-1", Via.FALLBACK),
        (SEED_AFTER_3_IS_NONE, BCAST, "smtp-1", Via.FALLBACK),
    ],
    ids=[f"{when}-{t.value}" for when in ("seed", "3-none") for t in (SEG, EVT, NEWS, BCAST)],
)
def test_design_seed_example_routes(
    servers: list[Server], campaign_type: CampaignType, expected_name: str, expected_via: Via
) -> None:
    route = resolve(servers, campaign_type)
    assert route.server is not None
    assert (route.server.name, route.via) == (expected_name, expected_via)


def test_design_seed_example_allows_setting_server_3_to_none_and_then_idles_it() -> None:
    check_role_change(SEED, 3, Role.NONE)
    table = routing_table(SEED_AFTER_3_IS_NONE)
    assert [(i.server.name, i.reason) for i in table.idle] == [("smtp-3", "set to None")]


FIVE = [
    srv(1, Role.ALL_EMAILS, "fallback"),
    srv(2, Role.SEGMENT_TRIGGERED, "segments"),
    srv(3, Role.EVENT_TRIGGERED, "events"),
    srv(4, Role.NEWSLETTERS, "newsletters"),
    srv(5, Role.TRIGGERED_BROADCASTS, "broadcasts"),
]


@pytest.mark.parametrize(
    ("campaign_type", "expected_name"),
    [(SEG, "segments"), (EVT, "events"), (NEWS, "newsletters"), (BCAST, "broadcasts")],
    ids=lambda value: str(value),
)
def test_design_five_server_example_routes_every_type_to_its_own_server(
    campaign_type: CampaignType, expected_name: str
) -> None:
    route = resolve(FIVE, campaign_type)
    assert route.server is not None
    assert (route.server.name, route.via) == (expected_name, Via.SPECIFIC)


def test_design_five_server_example_leaves_the_all_emails_server_idle() -> None:
    table = routing_table(FIVE)
    assert {route.server.name for route in table.routes if route.server} == {
        "segments",
        "events",
        "newsletters",
        "broadcasts",
    }
    assert [(i.server.name, i.reason) for i in table.idle] == [
        ("fallback", "All Emails, but every campaign type has a server of its own")
    ]


@pytest.mark.parametrize(
    ("to_role", "error"),
    [
        (Role.NONE, FallbackRequired),
        (Role.SEGMENT_TRIGGERED, RoleTaken),
        (Role.EVENT_TRIGGERED, RoleTaken),
        (Role.NEWSLETTERS, RoleTaken),
        (Role.TRIGGERED_BROADCASTS, RoleTaken),
    ],
    ids=lambda value: value.value if isinstance(value, Role) else value.__name__,
)
def test_design_five_server_example_all_emails_server_cannot_change_role(
    to_role: Role, error: type[RuleViolation]
) -> None:
    with pytest.raises(error):
        check_role_change(FIVE, 1, to_role)


def test_design_five_server_example_all_emails_server_cannot_be_deleted() -> None:
    with pytest.raises(FallbackRequired):
        check_delete(FIVE, 1)


# --- The routing table ---------------------------------------------------------------------


def test_routing_table_lists_every_type_once_in_declaration_order() -> None:
    table = routing_table(SEED)
    assert [route.campaign_type for route in table.routes] == list(CampaignType)


def test_routing_table_reports_idle_servers_in_position_order_with_reasons() -> None:
    servers = [
        srv(1, Role.ALL_EMAILS, "second-fallback", position=2),
        srv(2, Role.NONE, "parked", position=3),
        srv(3, Role.ALL_EMAILS, "first-fallback", position=1),
        srv(4, Role.NEWSLETTERS, "news", position=4),
    ]
    table = routing_table(servers)
    assert [(i.server.name, i.reason) for i in table.idle] == [
        (
            "second-fallback",
            "All Emails, but 'first-fallback' comes first and is the primary fallback",
        ),
        ("parked", "set to None"),
    ]
    carriers = {route.campaign_type: route.server.name for route in table.routes if route.server}
    assert carriers == {
        SEG: "first-fallback",
        EVT: "first-fallback",
        NEWS: "news",
        BCAST: "first-fallback",
    }


def test_routing_table_with_no_servers_has_no_idle_servers_and_no_route() -> None:
    table = routing_table([])
    assert table.idle == []
    assert all(route.server is None and route.via is None for route in table.routes)


def test_routing_table_with_no_servers_uses_the_default_relay_when_configured() -> None:
    table = routing_table([], has_default_relay=True)
    assert [route.via for route in table.routes] == [Via.DEFAULT_RELAY] * len(CampaignType)


# --- The CampaignType -> Role mapping ------------------------------------------------------------


def test_every_campaign_type_has_exactly_one_serving_role() -> None:
    assert set(SERVING_ROLE) == set(CampaignType)
    assert all(campaign_type.role is SERVING_ROLE[campaign_type] for campaign_type in CampaignType)


def test_every_specific_role_serves_exactly_one_campaign_type() -> None:
    served = list(SERVING_ROLE.values())
    assert len(served) == len(set(served))
    assert set(served) == SPECIFIC_ROLES == set(Role) - {Role.ALL_EMAILS, Role.NONE}


@pytest.mark.parametrize(
    ("campaign_type", "role"),
    [
        (SEG, Role.SEGMENT_TRIGGERED),
        (EVT, Role.EVENT_TRIGGERED),
        (NEWS, Role.NEWSLETTERS),
        (BCAST, Role.TRIGGERED_BROADCASTS),
    ],
)
def test_campaign_type_maps_to_the_role_named_in_the_design(
    campaign_type: CampaignType, role: Role
) -> None:
    assert campaign_type.role is role


def test_only_the_four_serving_roles_are_specific() -> None:
    assert not Role.ALL_EMAILS.is_specific
    assert not Role.NONE.is_specific
    assert all(role.is_specific for role in SERVING_ROLE.values())


# --- R7: no custom server ------------------------------------------------------------------


@pytest.mark.parametrize("campaign_type", list(CampaignType))
def test_without_servers_the_default_relay_carries_every_type(
    campaign_type: CampaignType,
) -> None:
    assert resolve([], campaign_type, has_default_relay=True) == Route(
        campaign_type, None, Via.DEFAULT_RELAY
    )


@pytest.mark.parametrize("campaign_type", list(CampaignType))
def test_without_servers_or_default_relay_there_is_no_route(campaign_type: CampaignType) -> None:
    route = resolve([], campaign_type, has_default_relay=False)
    assert route == Route(campaign_type, None, None)
    assert "no_route" in route.explanation


# --- Failover: a specific server that cannot be reached --------------------------------------

FAILOVER_SERVERS = [srv(1, Role.ALL_EMAILS, "main"), srv(2, Role.NEWSLETTERS, "news")]


def test_with_failover_an_unreachable_specific_server_hands_its_type_to_the_primary() -> None:
    route = resolve(FAILOVER_SERVERS, NEWS, unreachable={2}, failover=True)
    assert (route.server, route.via, route.down) == (
        FAILOVER_SERVERS[0],
        Via.FAILOVER,
        FAILOVER_SERVERS[1],
    )
    assert "failover: 'news'" in route.explanation and "cannot be reached" in route.explanation


def test_without_failover_an_unreachable_specific_server_keeps_its_type() -> None:
    route = resolve(FAILOVER_SERVERS, NEWS, unreachable={2}, failover=False)
    assert (route.server, route.via, route.down) == (FAILOVER_SERVERS[1], Via.SPECIFIC, None)


def test_a_reachable_specific_server_keeps_its_type_with_failover_on() -> None:
    route = resolve(FAILOVER_SERVERS, NEWS, unreachable={1}, failover=True)
    assert (route.server, route.via) == (FAILOVER_SERVERS[1], Via.SPECIFIC)


def test_no_failover_when_the_primary_fallback_is_unreachable_too() -> None:
    route = resolve(FAILOVER_SERVERS, NEWS, unreachable={1, 2}, failover=True)
    assert (route.server, route.via) == (FAILOVER_SERVERS[1], Via.SPECIFIC)


def test_types_already_on_the_primary_fallback_do_not_fail_over_elsewhere() -> None:
    servers = [*FAILOVER_SERVERS, srv(3, Role.ALL_EMAILS, "spare")]
    route = resolve(servers, SEG, unreachable={1}, failover=True)
    assert (route.server, route.via) == (servers[0], Via.FALLBACK)


def test_the_routing_table_shows_the_failover_and_does_not_call_the_down_server_idle() -> None:
    table = routing_table(FAILOVER_SERVERS, unreachable={2}, failover=True)
    news = next(route for route in table.routes if route.campaign_type is NEWS)
    assert (news.server, news.via, news.down) == (
        FAILOVER_SERVERS[0],
        Via.FAILOVER,
        FAILOVER_SERVERS[1],
    )
    assert table.idle == []

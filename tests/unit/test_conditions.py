"""Condition trees: parsing (with a pointer to the bad node) and evaluation against facts."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from postyard.conditions import (
    MAX_WITHIN_DAYS,
    ConditionError,
    Facts,
    Operator,
    has_time_window,
    parse,
)

NOW = datetime(2026, 6, 15, 12, 0, 0)


def attr(field: str, operator: str, *value: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"field": field, "operator": operator}
    if value:
        [body["value"]] = value
    return {"attribute": body}


def event(name: str, **options: Any) -> dict[str, Any]:
    return {"event": {"name": name, **options}}


def holds(tree: Any, attributes: dict[str, Any] | None = None, **events: list[datetime]) -> bool:
    return parse(tree).holds(Facts(attributes or {}, events, NOW))


def days_ago(*days: float) -> list[datetime]:
    return [NOW - timedelta(days=d) for d in days]


# --- attribute operators ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "stored", "value", "expected"),
    [
        # numbers
        ("eq", 3, 3, True),
        ("eq", 3, 3.0, True),
        ("eq", 3, 4, False),
        ("neq", 3, 4, True),
        ("neq", 3, 3, False),
        ("gt", 10, 9.5, True),
        ("gt", 10, 10, False),
        ("gte", 10, 10, True),
        ("gte", 9, 10, False),
        ("lt", -1, 0, True),
        ("lt", 0, 0, False),
        ("lte", 0, 0, True),
        ("lte", 1, 0, False),
        ("in", 2, [1, 2, 3], True),
        ("in", 5, [1, 2, 3], False),
        # numbers against numeric strings compare as numbers
        ("eq", "42", 42, True),
        ("gt", "10", 9, True),
        ("lt", 9, "10", True),
        ("gt", "ten", 9, False),
        # strings
        ("eq", "gold", "gold", True),
        ("eq", "gold", "Gold", False),
        ("neq", "gold", "silver", True),
        ("contains", "hello world", "lo w", True),
        ("contains", "hello", "bye", False),
        ("starts_with", "premium-annual", "premium", True),
        ("starts_with", "basic", "premium", False),
        ("in", "gold", ["gold", "silver"], True),
        ("in", "bronze", ["gold", "silver"], False),
        ("gt", "b", "a", True),
        ("lt", "apple", "banana", True),
        ("gte", "a", "a", True),
        ("lte", "b", "a", False),
        # lists: contains looks for an element
        ("contains", ["news", "beta"], "beta", True),
        ("contains", ["news"], "beta", False),
        ("contains", [1, 2], "2", True),
        # booleans equal only booleans
        ("eq", True, True, True),
        ("eq", True, 1, False),
        ("eq", False, 0, False),
        ("neq", True, 1, True),
        # values that cannot be compared are not equal and not ordered
        ("gt", [1], 0, False),
        ("lt", {"a": 1}, "b", False),
        ("contains", 123, "2", False),
        ("starts_with", 123, "1", False),
        ("eq", [1], [1], False),
    ],
)
def test_operators(operator: str, stored: Any, value: Any, expected: bool) -> None:
    assert holds(attr("x", operator, value), {"x": stored}) is expected


@pytest.mark.parametrize(
    ("operator", "stored", "value", "expected"),
    [
        # +02:00 at 10:00 is 08:00Z: earlier, though it sorts later as text
        ("lt", "2026-01-01T10:00:00+02:00", "2026-01-01T09:00:00Z", True),
        ("gt", "2026-01-01T10:00:00+02:00", "2026-01-01T09:00:00Z", False),
        ("eq", "2026-01-01T08:00:00Z", "2026-01-01T10:00:00+02:00", True),
        ("eq", "2026-01-01T08:00:00+00:00", "2026-01-01T08:00:00Z", True),
        ("neq", "2026-01-01T08:00:00Z", "2026-01-01T10:00:00+02:00", False),
        # no offset means UTC
        ("eq", "2026-01-01T08:00:00", "2026-01-01T08:00:00Z", True),
        # a bare date is its midnight
        ("eq", "2026-01-01", "2026-01-01T00:00:00Z", True),
        ("gte", "2026-03-01T00:00:00Z", "2026-03-01", True),
        ("lte", "2025-12-31T23:59:59Z", "2026-01-01", True),
        ("gt", "2026-01-02", "2026-01-01T23:59:59-01:00", False),
        ("in", "2026-01-01T08:00:00Z", ["2026-01-01T09:00:00+01:00"], True),
    ],
)
def test_iso_timestamps_compare_as_moments(
    operator: str, stored: str, value: str, expected: bool
) -> None:
    assert holds(attr("at", operator, value), {"at": stored}) is expected


def test_a_timestamp_against_plain_text_compares_as_text() -> None:
    assert holds(attr("at", "lt", "zzz"), {"at": "2026-01-01T00:00:00Z"})
    assert not holds(attr("at", "eq", "soon"), {"at": "2026-01-01"})


@pytest.mark.parametrize("stored", ["missing", None])
@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        ("exists", None, False),
        ("not_exists", None, True),
        ("eq", 1, False),
        ("neq", 1, True),
        ("contains", "a", False),
        ("starts_with", "a", False),
        ("in", [None, 1], False),
        ("gt", 0, False),
        ("gte", 0, False),
        ("lt", 0, False),
        ("lte", 0, False),
    ],
)
def test_a_missing_or_null_attribute(
    stored: Any, operator: str, value: Any, expected: bool
) -> None:
    """Null counts as missing: only `not_exists` and `neq` hold for it."""
    attributes = {} if stored == "missing" else {"x": None}
    tree = (
        attr("x", operator) if operator in {"exists", "not_exists"} else attr("x", operator, value)
    )
    assert holds(tree, attributes) is expected


@pytest.mark.parametrize("stored", [0, "", False, []])
def test_falsy_values_exist(stored: Any) -> None:
    assert holds(attr("x", "exists"), {"x": stored})
    assert not holds(attr("x", "not_exists"), {"x": stored})


def test_every_operator_is_covered() -> None:
    """A new operator needs cases here, and a line in the API documentation."""
    assert {op.value for op in Operator} == {
        "eq",
        "neq",
        "exists",
        "not_exists",
        "contains",
        "starts_with",
        "in",
        "gt",
        "gte",
        "lt",
        "lte",
    }


# --- and / or / not -----------------------------------------------------------------------

GOLD = attr("plan", "eq", "gold")
ADULT = attr("age", "gte", 18)


@pytest.mark.parametrize(
    ("attributes", "both", "either", "not_gold"),
    [
        ({"plan": "gold", "age": 30}, True, True, False),
        ({"plan": "gold", "age": 10}, False, True, False),
        ({"plan": "free", "age": 30}, False, True, True),
        ({"plan": "free", "age": 10}, False, False, True),
        ({}, False, False, True),
    ],
)
def test_and_or_not(attributes: dict[str, Any], both: bool, either: bool, not_gold: bool) -> None:
    assert holds({"and": [GOLD, ADULT]}, attributes) is both
    assert holds({"or": [GOLD, ADULT]}, attributes) is either
    assert holds({"not": GOLD}, attributes) is not_gold
    assert holds({"not": {"not": GOLD}}, attributes) is not not_gold


def test_nesting() -> None:
    tree = {"or": [{"and": [GOLD, {"not": ADULT}]}, attr("vip", "eq", True)]}
    assert holds(tree, {"plan": "gold", "age": 12})
    assert not holds(tree, {"plan": "gold", "age": 40})
    assert holds(tree, {"vip": True})


def test_a_single_child_is_allowed() -> None:
    assert holds({"and": [GOLD]}, {"plan": "gold"})
    assert not holds({"or": [GOLD]}, {"plan": "free"})


# --- events -------------------------------------------------------------------------------


def test_an_event_ever() -> None:
    assert holds(event("signup"), signup=days_ago(4000))
    assert not holds(event("signup"), login=days_ago(1))
    assert not holds(event("signup"))


def test_an_event_within_days() -> None:
    tree = event("purchase", within_days=7)
    assert holds(tree, purchase=days_ago(3))
    assert holds(tree, purchase=days_ago(7))  # the window's edge is inside
    assert not holds(tree, purchase=days_ago(7.0001))
    assert holds(tree, purchase=days_ago(30, 2))
    assert not holds(tree, purchase=days_ago(30, 8))


def test_fractional_days() -> None:
    tree = event("visit", within_days=0.5)
    assert holds(tree, visit=days_ago(0.25))
    assert not holds(tree, visit=days_ago(0.75))


def test_an_event_min_count() -> None:
    tree = event("login", min_count=3)
    assert holds(tree, login=days_ago(1, 200, 400))
    assert not holds(tree, login=days_ago(1, 2))


def test_an_event_min_count_within_days_counts_only_the_window() -> None:
    tree = event("login", min_count=2, within_days=10)
    assert holds(tree, login=days_ago(1, 9, 40))
    assert not holds(tree, login=days_ago(1, 11, 40))


def test_events_combine_with_attributes() -> None:
    tree = {"and": [GOLD, {"not": event("churned")}]}
    assert holds(tree, {"plan": "gold"})
    assert not holds(tree, {"plan": "gold"}, churned=days_ago(1))


def test_the_passing_of_time_moves_people_out_of_a_window() -> None:
    condition = parse(event("purchase", within_days=7))
    bought = {"purchase": [NOW]}
    assert condition.holds(Facts({}, bought, NOW + timedelta(days=6)))
    assert not condition.holds(Facts({}, bought, NOW + timedelta(days=8)))


def test_the_longest_window_evaluates() -> None:
    condition = parse(event("x", within_days=MAX_WITHIN_DAYS))
    assert condition.holds(Facts({}, {"x": [datetime(1950, 1, 1)]}, NOW))


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (GOLD, False),
        (event("signup"), False),
        (event("signup", min_count=2), False),
        (event("signup", within_days=3), True),
        ({"and": [GOLD, event("x", within_days=1)]}, True),
        ({"or": [GOLD, event("x")]}, False),
        ({"not": event("x", within_days=1)}, True),
        ({"and": [GOLD, {"or": [ADULT, {"not": event("x", within_days=2)}]}]}, True),
    ],
)
def test_has_time_window(tree: Any, expected: bool) -> None:
    assert has_time_window(parse(tree)) is expected


# --- parse errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "pointer", "fragment"),
    [
        # the shape of a node
        (None, "$", "exactly one key"),
        ([], "$", "exactly one key"),
        ("gold", "$", "exactly one key"),
        ({}, "$", "exactly one key"),
        ({"and": [GOLD], "or": [GOLD]}, "$", "exactly one key"),
        ({"xor": [GOLD]}, "$", 'unknown condition "xor"'),
        ({"and": []}, "$.and", "non-empty list"),
        ({"or": GOLD}, "$.or", "non-empty list"),
        ({"and": [GOLD, 3]}, "$.and[1]", "exactly one key"),
        ({"not": []}, "$.not", "exactly one key"),
        ({"not": {"not": {"maybe": 1}}}, "$.not.not", 'unknown condition "maybe"'),
        # attribute nodes
        ({"attribute": "plan"}, "$.attribute", "must be an object"),
        ({"attribute": {"operator": "eq", "value": 1}}, "$.attribute", "missing field"),
        ({"attribute": {"field": "x"}}, "$.attribute", "missing operator"),
        (
            {"attribute": {"field": "x", "operator": "eq", "value": 1, "unit": "kg"}},
            "$.attribute",
            "unknown key unit",
        ),
        (attr("", "eq", 1), "$.attribute.field", "non-empty string"),
        (attr(3, "eq", 1), "$.attribute.field", "non-empty string"),
        (attr("x", "equals", 1), "$.attribute.operator", "unknown operator 'equals'"),
        (attr("x", "EQ", 1), "$.attribute.operator", "unknown operator 'EQ'"),
        (attr("x", ["eq"], 1), "$.attribute.operator", "unknown operator"),
        (attr("x", "exists", True), "$.attribute.value", "exists takes no value"),
        (attr("x", "not_exists", None), "$.attribute.value", "not_exists takes no value"),
        (attr("x", "eq"), "$.attribute.value", "eq needs a value"),
        (attr("x", "gt"), "$.attribute.value", "gt needs a value"),
        (attr("x", "in", "gold"), "$.attribute.value", "in takes a list"),
        (attr("x", "contains", 3), "$.attribute.value", "contains takes a string"),
        (attr("x", "starts_with", ["a"]), "$.attribute.value", "starts_with takes a string"),
        (attr("x", "gt", [1]), "$.attribute.value", "gt takes a number or a string"),
        (attr("x", "lte", True), "$.attribute.value", "lte takes a number or a string"),
        (attr("x", "lt", None), "$.attribute.value", "lt takes a number or a string"),
        # event nodes
        ({"event": "signup"}, "$.event", "must be an object"),
        ({"event": {}}, "$.event", "missing name"),
        ({"event": {"name": "a", "times": 2}}, "$.event", "unknown key times"),
        (event(""), "$.event.name", "non-empty string"),
        (event(7), "$.event.name", "non-empty string"),
        (event("a", within_days=0), "$.event.within_days", "above zero"),
        (event("a", within_days=-1), "$.event.within_days", "above zero"),
        (event("a", within_days="7"), "$.event.within_days", "above zero"),
        (event("a", within_days=True), "$.event.within_days", "above zero"),
        (event("a", within_days=MAX_WITHIN_DAYS + 1), "$.event.within_days", "at most"),
        (event("a", within_days=float("inf")), "$.event.within_days", "at most"),
        (event("a", within_days=float("nan")), "$.event.within_days", "above zero"),
        (event("a", min_count=0), "$.event.min_count", "at least 1"),
        (event("a", min_count=1.5), "$.event.min_count", "whole number"),
        (event("a", min_count=True), "$.event.min_count", "whole number"),
        (event("a", min_count="2"), "$.event.min_count", "whole number"),
        # the pointer follows the path down
        (
            {"and": [GOLD, attr("plan", "eqq", "gold")]},
            "$.and[1].attribute.operator",
            "unknown operator 'eqq'",
        ),
        (
            {"or": [GOLD, {"and": [ADULT, {"not": event("x", min_count=0)}]}]},
            "$.or[1].and[1].not.event.min_count",
            "at least 1",
        ),
    ],
)
def test_parse_errors_point_at_the_node(tree: Any, pointer: str, fragment: str) -> None:
    with pytest.raises(ConditionError) as raised:
        parse(tree)
    assert raised.value.pointer == pointer
    assert fragment in raised.value.message
    assert str(raised.value) == f"{pointer}: {raised.value.message}"


def test_the_message_of_an_unknown_operator_lists_the_known_ones() -> None:
    with pytest.raises(ConditionError) as raised:
        parse({"and": [GOLD, attr("plan", "eqq", "gold")]})
    assert str(raised.value).startswith("$.and[1].attribute.operator: unknown operator 'eqq'")
    assert "starts_with" in raised.value.message


@pytest.mark.parametrize(
    ("tree", "pointer"),
    [
        (event("signup"), "$.event"),
        ({"and": [GOLD, event("signup")]}, "$.and[1].event"),
        ({"not": {"or": [event("signup", within_days=1)]}}, "$.not.or[0].event"),
    ],
)
def test_events_can_be_refused(tree: Any, pointer: str) -> None:
    """An event filter looks at one event's data: there are no events to ask about."""
    with pytest.raises(ConditionError) as raised:
        parse(tree, allow_events=False)
    assert raised.value.pointer == pointer
    assert "event conditions cannot be used here" in raised.value.message


def test_attributes_parse_where_events_are_refused() -> None:
    condition = parse({"and": [GOLD, {"not": ADULT}]}, allow_events=False)
    assert condition.holds(Facts({"plan": "gold", "age": 3}, {}, NOW))

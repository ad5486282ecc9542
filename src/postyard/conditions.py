"""Condition trees: who is in a segment, which events trigger a campaign, whom a broadcast reaches.

A tree is plain JSON: `{"and": [...]}`, `{"or": [...]}`, `{"not": ...}`,
`{"attribute": {"field", "operator", "value"}}` and `{"event": {"name",
"within_days"?, "min_count"?}}`. It is parsed once into typed nodes, so a bad
tree is refused when it is saved, with a pointer to the node at fault, and
evaluating it later cannot fail. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any


class ConditionError(ValueError):
    """A tree that cannot be parsed; `pointer` says where, as a JSON path like `$.and[1]`."""

    def __init__(self, pointer: str, message: str) -> None:
        super().__init__(f"{pointer}: {message}")
        self.pointer = pointer
        self.message = message


class Operator(StrEnum):
    EQ = "eq"
    NEQ = "neq"
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    IN = "in"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"


# A window reaching back past year 1 cannot be computed (OverflowError when evaluated).
MAX_WITHIN_DAYS = 36_500
UNARY = {Operator.EXISTS, Operator.NOT_EXISTS}
ORDERING = {Operator.GT, Operator.GTE, Operator.LT, Operator.LTE}


@dataclass(frozen=True)
class Facts:
    """What a condition may look at: attributes, and the times of each named event."""

    attributes: Mapping[str, Any]
    events: Mapping[str, Sequence[datetime]]
    now: datetime


@dataclass(frozen=True)
class All:
    children: tuple[Condition, ...]

    def holds(self, facts: Facts) -> bool:
        return all(child.holds(facts) for child in self.children)


@dataclass(frozen=True)
class Any_:
    children: tuple[Condition, ...]

    def holds(self, facts: Facts) -> bool:
        return any(child.holds(facts) for child in self.children)


@dataclass(frozen=True)
class Not:
    child: Condition

    def holds(self, facts: Facts) -> bool:
        return not self.child.holds(facts)


@dataclass(frozen=True)
class Attribute:
    field: str
    operator: Operator
    value: Any = None

    def holds(self, facts: Facts) -> bool:
        present = self.field in facts.attributes and facts.attributes[self.field] is not None
        if self.operator in UNARY:
            return present == (self.operator == Operator.EXISTS)
        if not present:
            return self.operator == Operator.NEQ
        return _COMPARE[self.operator](facts.attributes[self.field], self.value)


@dataclass(frozen=True)
class Event:
    name: str
    within_days: float | None = None
    min_count: int = 1

    def holds(self, facts: Facts) -> bool:
        times = facts.events.get(self.name, ())
        if self.within_days is not None:
            since = facts.now - timedelta(days=self.within_days)
            times = [moment for moment in times if moment >= since]
        return len(times) >= self.min_count


Condition = All | Any_ | Not | Attribute | Event


def has_time_window(condition: Condition) -> bool:
    """Whether the passing of time alone can change the outcome (it must be re-evaluated)."""
    match condition:
        case All(children) | Any_(children):
            return any(has_time_window(child) for child in children)
        case Not(child):
            return has_time_window(child)
        case Event(within_days=within_days):
            return within_days is not None
    return False


def parse(tree: Any, *, allow_events: bool = True, pointer: str = "$") -> Condition:
    """Parse a JSON tree; event nodes are refused where there are no events (event filters)."""
    if not isinstance(tree, dict) or len(tree) != 1:
        raise ConditionError(
            pointer,
            'a condition is an object with exactly one key: "and", "or", "not", '
            '"attribute" or "event"',
        )
    [(kind, body)] = tree.items()
    here = f"{pointer}.{kind}"
    if kind in {"and", "or"}:
        if not isinstance(body, list) or not body:
            raise ConditionError(here, f'"{kind}" takes a non-empty list of conditions')
        children = tuple(
            parse(child, allow_events=allow_events, pointer=f"{here}[{index}]")
            for index, child in enumerate(body)
        )
        return All(children) if kind == "and" else Any_(children)
    if kind == "not":
        return Not(parse(body, allow_events=allow_events, pointer=here))
    if kind == "attribute":
        return _parse_attribute(body, here)
    if kind == "event":
        if not allow_events:
            raise ConditionError(here, "event conditions cannot be used here")
        return _parse_event(body, here)
    raise ConditionError(pointer, f'unknown condition "{kind}"')


def _parse_attribute(body: Any, pointer: str) -> Attribute:
    _expect_keys(body, pointer, required={"field", "operator"}, optional={"value"})
    field, operator = body["field"], body["operator"]
    if not isinstance(field, str) or not field:
        raise ConditionError(f"{pointer}.field", "must be a non-empty string")
    if operator not in Operator.__members__.values():
        raise ConditionError(
            f"{pointer}.operator",
            f"unknown operator {operator!r}; one of {', '.join(op.value for op in Operator)}",
        )
    operator = Operator(operator)
    value = body.get("value")
    if operator in UNARY:
        if "value" in body:
            raise ConditionError(f"{pointer}.value", f"{operator.value} takes no value")
        return Attribute(field, operator)
    if "value" not in body:
        raise ConditionError(f"{pointer}.value", f"{operator.value} needs a value")
    if operator == Operator.IN and not isinstance(value, list):
        raise ConditionError(f"{pointer}.value", "in takes a list of values")
    if operator in {Operator.CONTAINS, Operator.STARTS_WITH} and not isinstance(value, str):
        raise ConditionError(f"{pointer}.value", f"{operator.value} takes a string")
    if operator in ORDERING and not (_is_number(value) or isinstance(value, str)):
        raise ConditionError(f"{pointer}.value", f"{operator.value} takes a number or a string")
    return Attribute(field, operator, value)


def _parse_event(body: Any, pointer: str) -> Event:
    _expect_keys(body, pointer, required={"name"}, optional={"within_days", "min_count"})
    name, within_days, min_count = body["name"], body.get("within_days"), body.get("min_count", 1)
    if not isinstance(name, str) or not name:
        raise ConditionError(f"{pointer}.name", "must be a non-empty string")
    if within_days is not None and not (
        _is_number(within_days) and 0 < within_days <= MAX_WITHIN_DAYS
    ):
        raise ConditionError(
            f"{pointer}.within_days",
            f"must be a number of days above zero, at most {MAX_WITHIN_DAYS}",
        )
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ConditionError(f"{pointer}.min_count", "must be a whole number of at least 1")
    return Event(name, within_days, min_count)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _expect_keys(body: Any, pointer: str, *, required: set[str], optional: set[str]) -> None:
    if not isinstance(body, dict):
        raise ConditionError(pointer, "must be an object")
    missing = sorted(required - body.keys())
    if missing:
        raise ConditionError(pointer, f"missing {', '.join(missing)}")
    unknown = sorted(body.keys() - required - optional)
    if unknown:
        raise ConditionError(pointer, f"unknown key {', '.join(unknown)}")


def _comparable(left: Any, right: Any) -> tuple[Any, Any] | None:
    """Numbers compare as numbers, ISO timestamps as moments, strings as strings."""
    if isinstance(left, bool) or isinstance(right, bool):
        return (left, right) if type(left) is type(right) else None
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left, right
    if isinstance(left, str) and isinstance(right, str):
        moments = _moment(left), _moment(right)
        if moments[0] is not None and moments[1] is not None:
            return moments
        return left, right
    if isinstance(left, str) and isinstance(right, int | float):
        number = _number(left)
        return None if number is None else (number, right)
    if isinstance(left, int | float) and isinstance(right, str):
        number = _number(right)
        return None if number is None else (left, number)
    return None


def _moment(text: str) -> datetime | None:
    if len(text) < 10 or text[4] != "-":
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _equal(left: Any, right: Any) -> bool:
    pair = _comparable(left, right)
    return pair is not None and pair[0] == pair[1]


def _ordered(test: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(left: Any, right: Any) -> bool:
        pair = _comparable(left, right)
        return pair is not None and test(*pair)

    return compare


def _contains(left: Any, right: Any) -> bool:
    if isinstance(left, list):
        return any(_equal(item, right) for item in left)
    return isinstance(left, str) and right in left


_COMPARE: dict[Operator, Callable[[Any, Any], bool]] = {
    Operator.EQ: _equal,
    Operator.NEQ: lambda left, right: not _equal(left, right),
    Operator.CONTAINS: _contains,
    Operator.STARTS_WITH: lambda left, right: isinstance(left, str) and left.startswith(right),
    Operator.IN: lambda left, right: any(_equal(left, item) for item in right),
    Operator.GT: _ordered(lambda left, right: left > right),
    Operator.GTE: _ordered(lambda left, right: left >= right),
    Operator.LT: _ordered(lambda left, right: left < right),
    Operator.LTE: _ordered(lambda left, right: left <= right),
}

"""A field rendered by pieces, with a memo shared by many people (`postyard.templating`),
gives exactly what Liquid gives rendering it whole for each person: the same text, or the
same error, whatever the values, their types and the order the people come in."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from postyard.templating import (
    OUTPUT_LIMIT,
    Memo,
    MessageTemplate,
    Pieced,
    RenderError,
    Whole,
    compile_message,
)

FROM = "Acme <news@acme.example>"

PIECED = [
    "Hi {{ customer.first_name }} {{ customer.last_name | default: 'you' }}!",
    "{% if customer.n == 1 %}one{% elsif customer.n == 1.0 %}float{% else %}{{ customer.n }}"
    "{% endif %}",
    "{% for t in customer.tags %}{{ forloop.index }}:{{ t }}{% unless forloop.last %},"
    "{% endunless %}{% endfor %}",
    "{{ customer.tags.size }} {{ customer.tags.first }} {{ customer.tags.last }}",
    "{{ customer.tags | join: '-' }} {{ customer.tags | sort | first }}",
    "{{ customer.name.first }}|{{ customer.name }}|{{ customer.name.size }}",
    "{% if customer.name.given %}[{{ customer.name.given }}]{% endif %}",
    "{% case customer.plan %}{% when 'pro' %}P{% when 'free', 'team' %}F{% else %}?{% endcase %}",
    "Dear {{ customer.first_name | capitalize }}",
    "{{ partial }} {{ 'now' | date: '%Y' }} {{ now | date: '%Y' }}",
    "{% liquid\nif customer.plan == 'pro'\necho customer.first_name\nendif %}",
    "{% for i in (1..customer.n) %}{{ i }}{% endfor %}",
    "{{ customer[customer.key] }}",
    "{% for pair in customer %}{{ pair[0] }}={{ pair[1] }};{% endfor %}",
    "{% break %}",
    "{{ customer.big }}{{ customer.big }}",
    "<p>{{ customer.first_name }}</p>{% if customer.plan %}<b>{{ customer.plan | upcase }}"
    "</b>{% endif %} {{ customer.html | safe }}",
    "{{ unsubscribe_url }} {% comment %}x{% endcomment %}{% # note %}",
]
WHOLE = [
    "{% assign x = customer.plan %}{{ x }} {{ x | upcase }}",
    "{% for t in customer.tags limit: 1 %}{{ t }}{% endfor %}|"
    "{% for t in customer.tags offset: continue %}{{ t }}{{ customer.plan }}{% endfor %}",
    "{% for t in customer.tags %}{% cycle 'a', 'b' %}{% endfor %}",
    "{% capture c %}{{ customer.plan }}{% endcapture %}{{ c }}",
    "{% increment n %}{{ n }}",
]

CUSTOMERS: list[dict[str, Any]] = [
    {"first_name": "ada", "last_name": "Lovelace", "plan": "pro", "n": 1, "tags": ["b", "a"]},
    {"first_name": "ada", "last_name": "Lovelace", "plan": "pro", "n": 1.0, "tags": ["b", "a"]},
    {"first_name": "ada", "plan": "pro", "n": True, "tags": ["b", "a"]},
    {"first_name": "ada", "plan": "free", "n": "1", "tags": ["a", "b"]},
    {"first_name": "ada", "plan": "free", "n": 1, "tags": ["b", "a"]},
    {"first_name": "ada", "plan": "team", "n": -0.0, "tags": {"b": 1, "a": 2}},
    {"first_name": "ada", "plan": "team", "n": 0.0, "tags": {"a": 2, "b": 1}},
    {"first_name": "ada", "plan": None, "n": None, "tags": "ab"},
    {"plan": "pro", "n": 3, "tags": [["x", 1], ["y", 2]]},
    {"first_name": "bob", "name": {"first": "Bob", "size": 7}, "key": "first_name"},
    {"first_name": "bob", "name": "Bob", "key": "name"},
    {"first_name": "bob", "name": ["Bob"], "key": "missing"},
    {"first_name": "bob", "name": {"given": "Bob"}},
    {"first_name": "<b>&amp;", "plan": "<i>", "html": "<u>ok</u>", "n": 2},
    {"first_name": "\ud800", "plan": "pro"},
    {"first_name": "ada", "big": "x" * (OUTPUT_LIMIT // 2 + 1)},
    {"first_name": "ada", "since": datetime(2024, 1, 2), "tags": ("a", "b")},
    {"first_name": "ada", "n": 20_000},
]


def variables(customer: dict[str, Any], index: int) -> dict[str, Any]:
    return {
        "customer": {**customer, "id": f"user-{index}"},
        "unsubscribe_url": f"https://example.test/u/{index}",
        "partial": "set by the caller",
    }


def message(source: str) -> dict[str, str]:
    return {"from": FROM, "subject": "Hi {{ customer.first_name }}", "text": source, "html": source}


def whole(template: MessageTemplate) -> MessageTemplate:
    """The reference: Liquid renders each field in one pass, for each person anew."""
    return MessageTemplate(
        {
            name: Whole(field.template) if isinstance(field, Pieced) else field
            for name, field in template.templates.items()
        }
    )


def outcome(template: MessageTemplate, values: dict[str, Any], memo: Memo | None) -> object:
    try:
        return template.render(values, memo)
    except RenderError as error:
        return f"RenderError: {error}"


@pytest.mark.parametrize("source", PIECED + WHOLE)
def test_pieces_and_memo_render_what_liquid_renders_whole(source: str) -> None:
    template = compile_message(message(source))
    reference = whole(template)
    people = [variables(customer, index) for index, customer in enumerate(CUSTOMERS)]
    expected = [outcome(reference, values, None) for values in people]

    memo = Memo()
    for order in (people, people[::-1], people):  # the memo is filled, then read back
        for values in order:
            assert outcome(template, values, memo) == expected[people.index(values)]
    assert [outcome(template, values, None) for values in people] == expected


@pytest.mark.parametrize("source", PIECED)
def test_a_field_of_self_contained_statements_is_rendered_by_pieces(source: str) -> None:
    assert isinstance(compile_message(message(source)).templates["text"], Pieced)


@pytest.mark.parametrize("source", WHOLE)
def test_a_field_whose_statements_share_state_is_rendered_whole(source: str) -> None:
    assert isinstance(compile_message(message(source)).templates["text"], Whole)


def test_a_full_memo_starts_again_and_still_renders_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("postyard.templating.MEMO_ENTRIES", 2)
    template = compile_message(message("{% if customer.n > 1 %}{{ customer.n }}{% endif %}"))
    memo = Memo()
    for n in [1, 2, 3, 4, 2, 3, 1, 4]:
        assert template.render({"customer": {"n": n}}, memo).text == ("" if n == 1 else str(n))

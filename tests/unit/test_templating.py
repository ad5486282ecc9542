"""Liquid messages (`postyard.templating`): syntax errors with their place, the undefined
policy, header safety, the sandbox's limits and the compiled-template cache."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from postyard.templating import (
    RenderError,
    TemplateCache,
    TemplateSyntaxError,
    compile_message,
)

FROM = "Acme <news@acme.example>"


def message(**fields: str | None) -> dict[str, str | None]:
    return {"from": FROM, "subject": "Hello", "text": "Hi", **fields}


def render(variables: dict[str, object] | None = None, **fields: str | None) -> object:
    return compile_message(message(**fields)).render(variables or {})


@pytest.mark.parametrize(
    ("field", "source", "line", "column", "reason"),
    [
        ("subject", "Hi {{ customer.name", 1, 4, "expected '}}'"),
        ("text", "Hello\n\n  {{ customer.name | shout }}", 3, 22, "unknown filter 'shout'"),
        ("text", "Hello\n{% if customer.vip %}\nVIP", 2, 4, "expected tag endif"),
        ("html", "<p>\n{% for x in y %}{% endif %}", 2, 20, "unexpected tag 'endif'"),
        ("text", "one\n{{ }}", 2, 3, "expected a primitive expression"),
        ("text", '{% include "secrets.txt" %}', 1, 4, "unexpected tag 'include'"),
        ("text", '{% render "other" %}', 1, 4, "unexpected tag 'render'"),
    ],
)
def test_a_template_that_does_not_parse_names_its_field_line_and_column(
    field: str, source: str, line: int, column: int, reason: str
) -> None:
    with pytest.raises(TemplateSyntaxError) as raised:
        compile_message(message(**{field: source}))

    error = raised.value
    assert (error.field, error.line, error.column) == (field, line, column)
    assert reason in error.reason
    assert str(error).startswith(f"message.{field}: line {line}, column {column}: ")


def test_variables_render_for_each_person() -> None:
    template = compile_message(
        message(
            **{
                "from": "{{ customer.team }} at Acme <news@acme.example>",
                "subject": "{{ customer.name }}, your {{ event.plan }} plan",
                "text": "Data: {{ trigger.offer }}; leave: {{ unsubscribe_url }}",
                "html": "<p>{{ customer.name }}</p>",
            }
        )
    )

    rendered = template.render(
        {
            "customer": {"name": "Ann", "team": "Ops"},
            "event": {"plan": "pro"},
            "trigger": {"offer": "20%"},
            "unsubscribe_url": "https://postyard.example/u/x",
        }
    )

    assert rendered.from_address == "Ops at Acme <news@acme.example>"
    assert rendered.subject == "Ann, your pro plan"
    assert rendered.text == "Data: 20%; leave: https://postyard.example/u/x"
    assert rendered.html == "<p>Ann</p>"
    assert rendered.reply_to is None


def test_a_missing_variable_renders_as_nothing() -> None:
    rendered = render({"customer": {}}, subject="Hi {{ customer.first_name }}!", text="{{ nope }}")

    assert rendered.subject == "Hi !"
    assert rendered.text == ""


def test_missing_variables_are_falsy_in_conditions_and_empty_in_loops() -> None:
    rendered = render(
        {"customer": {}},
        text="{% if customer.vip %}VIP{% else %}regular{% endif %}"
        "{% for item in customer.cart %}{{ item }}{% endfor %}",
    )

    assert rendered.text == "regular"


def test_a_filter_applied_to_a_missing_variable_fails_the_render() -> None:
    template = compile_message(message(subject="Hi {{ customer.first_name | capitalize }}"))

    with pytest.raises(RenderError) as raised:
        template.render({"customer": {}})

    assert raised.value.field == "subject"
    assert "filter 'capitalize' needs a value" in str(raised.value)
    assert "customer.first_name" in str(raised.value)
    assert "line 1, column 29" in str(raised.value)
    assert template.render({"customer": {"first_name": "ann"}}).subject == "Hi Ann"


def test_default_supplies_a_missing_value_before_other_filters() -> None:
    rendered = render(
        {"customer": {}}, subject='Hi {{ customer.first_name | default: "there" | upcase }}'
    )

    assert rendered.subject == "Hi THERE"


def test_a_filter_error_on_a_present_value_fails_the_render() -> None:
    with pytest.raises(RenderError, match="divide by 0"):
        render({"customer": {"points": 3}}, text="{{ customer.points | divided_by: 0 }}")


@pytest.mark.parametrize("value", ["Ann\r\nBcc: victim@example.com", "Ann\nX", "Ann\rX"])
@pytest.mark.parametrize("field", ["subject", "from", "reply_to"])
def test_a_line_break_rendered_into_a_header_is_an_error_never_a_header(
    field: str, value: str
) -> None:
    source = {
        "subject": "Hi {{ customer.name }}",
        "from": "{{ customer.name }} <news@acme.example>",
        "reply_to": "{{ customer.name }} <help@acme.example>",
    }[field]
    template = compile_message(message(**{field: source}))

    with pytest.raises(RenderError) as raised:
        template.render({"customer": {"name": value}})

    assert raised.value.field == field
    assert "line break" in str(raised.value)


def test_line_breaks_are_fine_in_the_bodies() -> None:
    rendered = render({"customer": {"note": "a\nb"}}, text="{{ customer.note }}")

    assert rendered.text == "a\nb"


@pytest.mark.parametrize("rendered_from", ["", "nobody", "a@example.com, b@example.com"])
def test_from_must_render_to_exactly_one_address(rendered_from: str) -> None:
    template = compile_message(message(**{"from": "{{ customer.sender }}"}))

    with pytest.raises(RenderError) as raised:
        template.render({"customer": {"sender": rendered_from}})

    assert raised.value.field == "from"


def test_an_empty_reply_to_is_left_out() -> None:
    rendered = render({"customer": {}}, reply_to="{{ customer.manager }}")

    assert rendered.reply_to is None


def test_the_html_body_escapes_values_unless_marked_safe() -> None:
    rendered = render(
        {"customer": {"name": "<script>x</script>", "badge": "<b>gold</b>"}},
        html="<p>{{ customer.name }}</p>{{ customer.badge | safe }}",
        text="{{ customer.name }}",
    )

    assert rendered.html == "<p>&lt;script&gt;x&lt;/script&gt;</p><b>gold</b>"
    assert rendered.text == "<script>x</script>"


def test_a_nul_character_in_the_output_is_an_error() -> None:
    with pytest.raises(RenderError, match="NUL"):
        render({"customer": {"name": "a\x00b"}}, text="{{ customer.name }}")


def test_runaway_loops_are_stopped() -> None:
    with pytest.raises(RenderError, match="loop iteration limit"):
        render(text="{% for i in (1..1000000) %}x{% endfor %}")


def test_runaway_output_is_stopped() -> None:
    two_hundred_characters = "x" * 200
    template = "{% for i in (1..9000) %}{{ chunk }}{% endfor %}"

    with pytest.raises(RenderError, match="output stream limit"):
        render({"chunk": two_hundred_characters}, text=template)


def test_the_cache_compiles_a_campaign_once_per_version() -> None:
    cache = TemplateCache(size=4)
    updated_at = datetime(2026, 1, 1)

    first = cache.get(7, updated_at, message(subject="v1 {{ customer.name }}"))
    again = cache.get(7, updated_at, message(subject="ignored: same version"))
    edited = cache.get(7, updated_at + timedelta(seconds=1), message(subject="v2"))

    assert again is first
    assert edited is not first
    assert first.render({"customer": {"name": "Ann"}}).subject == "v1 Ann"
    assert edited.render({}).subject == "v2"


def test_the_cache_keeps_only_the_most_recently_used_entries() -> None:
    cache = TemplateCache(size=2)
    moment = datetime(2026, 1, 1)
    one = cache.get(1, moment, message())
    cache.get(2, moment, message())
    assert cache.get(1, moment, message()) is one  # 1 is now the most recently used

    cache.get(3, moment, message())

    assert cache.get(1, moment, message()) is one
    assert cache.get(2, moment, message(subject="recompiled")).render({}).subject == "recompiled"

"""Liquid messages: compile a campaign's fields once, render them for each person, sandboxed.

The variables are `customer.*`, `event.*`, `trigger.*` and `unsubscribe_url`;
which of them a message sees is the caller's business, this module only renders.

Undefined policy. A variable that is not set renders as nothing, so
`Hi {{ customer.first_name }}` works for everyone. A filter applied to a value
that is not set fails the render (`{{ customer.first_name | capitalize }}` for
a person without a first name), because a transformation of nothing is a
template bug rather than a blank: the person's delivery is recorded `failed`
with the reason, and the rest of the audience is unaffected. `default` is the
exception, since it exists to supply the missing value:
`{{ customer.first_name | default: "there" | capitalize }}`.

Sandbox. There are no template loaders (`include` and `render` are not tags
here), loops, output and local variables are capped, and the HTML body escapes
every value it outputs unless the template marks it `| safe`: attribute values
come from whoever filled in a sign-up form.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.utils import getaddresses
from functools import lru_cache, wraps
from typing import Any, ClassVar, Protocol

from email_validator import EmailNotValidError, validate_email
from liquid import Environment
from liquid.exceptions import LiquidError, LiquidSyntaxError, LiquidTypeError
from liquid.template import BoundTemplate
from liquid.token import Token
from liquid.undefined import Undefined

FIELDS = ("from", "reply_to", "subject", "text", "html")
HEADER_FIELDS = frozenset({"from", "reply_to", "subject"})
ADDRESS_FIELDS = frozenset({"from", "reply_to"})
FILTERS_FOR_MISSING_VALUES = frozenset({"default"})
CACHE_SIZE = 512
# Where Liquid can start: an output, a tag or a comment. Text without any is plain text.
_MARKUP = re.compile(r"\{[{%#]")


class TemplateSyntaxError(ValueError):
    """A field that does not parse; `line` and `column` are 1-based."""

    def __init__(self, field: str, line: int, column: int, reason: str) -> None:
        super().__init__(f"message.{field}: line {line}, column {column}: {reason}")
        self.field = field
        self.line = line
        self.column = column
        self.reason = reason


class RenderError(ValueError):
    """A field that cannot be rendered for one person; the message says which and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class MissingValueError(LiquidTypeError):
    """A filter was given a variable that is not set (see the undefined policy)."""


def _needs_a_value(name: str, apply: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(apply)
    def strict(value: object, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, Undefined):
            missing = value.hint or f"'{value.name}' is undefined"
            raise MissingValueError(
                f"filter '{name}' needs a value: {missing}; "
                f'use `| default: "…"` before it to supply one',
                token=None,
            )
        return apply(value, *args, **kwargs)

    return strict


class _Sandbox(Environment):
    """Liquid with limits, no loaders, and filters that refuse a missing value."""

    loop_iteration_limit: ClassVar[int | None] = 10_000
    output_stream_limit: ClassVar[int | None] = 1_000_000
    local_namespace_limit: ClassVar[int | None] = 1_000_000

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(autoescape=autoescape)
        for tag in ("include", "render"):
            del self.tags[tag]
        for name, apply in list(self.filters.items()):
            if name not in FILTERS_FOR_MISSING_VALUES:
                self.filters[name] = _needs_a_value(name, apply)

    def error(
        self,
        exc: type[LiquidError] | LiquidError,
        msg: str | None = None,
        token: Token | None = None,
    ) -> None:
        """Point errors the parser raised without a position at the statement being parsed."""
        if isinstance(exc, LiquidError) and token is not None and not _has_position(exc.token):
            exc.token = token
        super().error(exc, msg, token)


PLAIN = _Sandbox(autoescape=False)
HTML = _Sandbox(autoescape=True)


def _has_position(token: Token | None) -> bool:
    return token is not None and token.start_index >= 0


@dataclass(frozen=True)
class Rendered:
    from_address: str
    reply_to: str | None
    subject: str
    text: str | None
    html: str | None


class Field(Protocol):
    def render(self, *args: Any, **kwargs: Any) -> str: ...


@dataclass(frozen=True)
class Constant:
    """A field without Liquid markup: its text is the output for everyone, so a send to
    many people does not walk a parsed template once per person for it."""

    text: str

    def render(self, *_args: Any, **_kwargs: Any) -> str:
        return self.text


@dataclass(frozen=True)
class MessageTemplate:
    """A campaign's compiled fields; `render` is safe to call from several threads."""

    templates: Mapping[str, Field]

    def render(self, variables: Mapping[str, object]) -> Rendered:
        """Render every field for one person; a RenderError names the field at fault."""
        out = {field: self._render_field(field, variables) for field in self.templates}
        return Rendered(
            from_address=out["from"] or "",
            reply_to=out.get("reply_to") or None,
            subject=out["subject"] or "",
            text=out.get("text"),
            html=out.get("html"),
        )

    def _render_field(self, field: str, variables: Mapping[str, object]) -> str:
        try:
            value = self.templates[field].render(**variables)
        except LiquidError as error:
            raise RenderError(field, _describe(error)) from None
        except Exception as error:  # a filter's own bug must fail one person, not the audience
            raise RenderError(field, f"{type(error).__name__}: {error}") from None
        if "\x00" in value:
            raise RenderError(field, "the rendered text contains a NUL character")
        if field in HEADER_FIELDS and ("\r" in value or "\n" in value):
            raise RenderError(field, "the rendered header contains a line break (CR or LF)")
        if field in ADDRESS_FIELDS and (value.strip() or field == "from"):
            value = _mailbox(field, value.strip())
        return value


def compile_message(message: Mapping[str, str | None]) -> MessageTemplate:
    """Parse every field that is set; raises TemplateSyntaxError for the first that fails."""
    templates: dict[str, Field] = {}
    for field in FIELDS:
        source = message.get(field)
        if source is None:
            continue
        compiled = _compile(field, source)
        templates[field] = compiled if _MARKUP.search(source) else Constant(source)
    return MessageTemplate(templates)


def _compile(field: str, source: str) -> BoundTemplate:
    environment = HTML if field == "html" else PLAIN
    try:
        template = environment.from_string(source)
    except LiquidError as error:
        line, column = _position(environment, source, error)
        raise TemplateSyntaxError(field, line, column, str(error.message)) from None
    for name, spans in template.analyze(include_partials=False).filters.items():
        if name not in environment.filters:
            line, column = spans[0].line_col(source)
            raise TemplateSyntaxError(field, line, column + 1, f"unknown filter '{name}'")
    return template


def _position(environment: Environment, source: str, error: LiquidError) -> tuple[int, int]:
    """Where the error is; an unclosed block is reported at its opening tag."""
    context = error.context()
    if context is not None:
        return context[0], context[1] + 1
    if isinstance(error, LiquidSyntaxError):
        unclosed = environment.analyze_tags_from_string(source).unclosed_tags
        spans = [span for spans in unclosed.values() for span in spans]
        if spans:
            return _line_col(source, min(span.index for span in spans))
    return _line_col(source, len(source))


def _line_col(source: str, index: int) -> tuple[int, int]:
    before = source[:index]
    line = before.count("\n") + 1
    return line, index - (before.rfind("\n") + 1) + 1


def _describe(error: LiquidError) -> str:
    context = error.context()
    where = f" (line {context[0]}, column {context[1] + 1})" if context else ""
    return f"{error.message}{where}"


@lru_cache(maxsize=4096)
def _mailbox(field: str, value: str) -> str:
    """One address with an optional display name, as the API accepts for `from`."""
    mailboxes = getaddresses([value])
    if len(mailboxes) != 1 or not mailboxes[0][1]:
        raise RenderError(field, f"rendered {value!r}, which is not exactly one email address")
    name, address = mailboxes[0]
    try:
        normalized = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise RenderError(field, f"rendered {value!r}, not a valid address: {error}") from None
    return str(Address(display_name=name, addr_spec=normalized)) if name else normalized


class TemplateCache:
    """Compiled messages by (campaign id, updated_at): an edit changes the key, so no
    stale template is ever rendered, and an unchanged campaign is parsed once per process."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[int, datetime], MessageTemplate] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, campaign_id: int, updated_at: datetime, message: Mapping[str, str | None]
    ) -> MessageTemplate:
        key = (campaign_id, updated_at)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        compiled = compile_message(message)
        with self._lock:
            self._entries[key] = compiled
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return compiled


templates = TemplateCache()

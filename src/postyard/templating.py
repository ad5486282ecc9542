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

Speed. A send renders one message per person, and most of a message is the same
for many of them: the `if` on a plan, the loop over a few interests. A field is
therefore kept as its top-level pieces: text, `{{ a.b }}` looked up directly, and
other statements whose output is remembered by the values they read (`Memo`),
so that Liquid walks a statement again only for values it has not seen. Liquid
renders a field whole, as before, when its statements share state (`assign`,
`cycle`, ...) and whenever a piece fails, so errors keep their wording and place.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.utils import getaddresses
from functools import lru_cache, wraps
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from email_validator import EmailNotValidError, validate_email
from liquid import Environment, RenderContext
from liquid.ast import Node
from liquid.builtin.content import ContentNode
from liquid.builtin.expressions import FilteredExpression, LoopExpression, Path, StringLiteral
from liquid.builtin.output import OutputNode
from liquid.exceptions import LiquidError, LiquidSyntaxError, LiquidTypeError
from liquid.output import LimitedStringIO
from liquid.static_analysis import Segments, TemplateAnalysis
from liquid.stringify import to_liquid_string
from liquid.template import BoundTemplate
from liquid.token import Token
from liquid.undefined import Undefined

FIELDS = ("from", "reply_to", "subject", "text", "html")
HEADER_FIELDS = frozenset({"from", "reply_to", "subject"})
ADDRESS_FIELDS = frozenset({"from", "reply_to"})
FILTERS_FOR_MISSING_VALUES = frozenset({"default"})
CACHE_SIZE = 512
OUTPUT_LIMIT = 1_000_000
# Where Liquid can start: an output, a tag or a comment. Text without any is plain text.
_MARKUP = re.compile(r"\{[{%#]")
# Tags whose effect ends with their own statement: a field made of these renders the same
# one top-level statement at a time. `assign`, `capture`, `increment`, `decrement`, `cycle`,
# `ifchanged` and `tablerow` are not among them; neither is a tag added later, until checked.
SELF_CONTAINED_TAGS = frozenset(
    {"if", "unless", "case", "for", "break", "continue", "echo", "liquid", "comment", "#", "doc"}
)
# Filters whose result depends on nothing but their input and arguments: all the standard
# ones but `date`, which reads the clock for "now".
PURE_FILTERS = frozenset(
    {
        "abs", "append", "at_least", "at_most", "base64_decode", "base64_encode",
        "base64_url_safe_decode", "base64_url_safe_encode", "capitalize", "ceil", "compact",
        "concat", "default", "divided_by", "downcase", "escape", "escape_once", "escapejs",
        "find", "find_index", "first", "floor", "has", "join", "last", "lstrip", "map",
        "minus", "modulo", "newline_to_br", "plus", "prepend", "reject", "remove",
        "remove_first", "remove_last", "replace", "replace_first", "replace_last", "reverse",
        "round", "rstrip", "safe", "size", "slice", "sort", "sort_natural", "split", "squish",
        "strip", "strip_html", "strip_newlines", "sum", "times", "truncate", "truncatewords",
        "uniq", "upcase", "url_decode", "url_encode", "where",
    }
)  # fmt: skip
# Variables Liquid supplies itself: the clock, and `partial`, which every render sets.
CLOCK_VARIABLES = frozenset({"now", "today"})
LIQUID_VARIABLES = CLOCK_VARIABLES | {"partial"}
# Path segments Liquid resolves by more than a key lookup (a list's size, a hash's first pair).
COMPUTED_SEGMENTS = frozenset({"size", "first", "last"})
# What one memo holds at most (outputs, characters of them), and how many campaigns' memos
# are kept: those being sent, batch after batch, or triggered now.
MEMO_ENTRIES = 2048
MEMO_CHARS = 1_000_000
MEMO_CACHE_SIZE = 16


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
    output_stream_limit: ClassVar[int | None] = OUTPUT_LIMIT
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


class Memo:
    """Outputs of statements already rendered, by statement and the values it read.

    Bounded: past MEMO_ENTRIES outputs or MEMO_CHARS characters it starts again empty.
    Threads may share one: a lost update costs a render, never a wrong output.
    """

    def __init__(self) -> None:
        self._outputs: dict[Hashable, str] = {}
        self._chars = 0

    def get(self, key: Hashable) -> str | None:
        return self._outputs.get(key)

    def put(self, key: Hashable, text: str) -> None:
        if len(self._outputs) >= MEMO_ENTRIES or self._chars + len(text) > MEMO_CHARS:
            self._outputs.clear()
            self._chars = 0
        self._outputs[key] = text
        self._chars += len(text)


class Field(Protocol):
    def render(self, variables: Mapping[str, object], memo: Memo) -> str: ...


@dataclass(frozen=True)
class Constant:
    """A field without Liquid markup: its text is the output for everyone, so a send to
    many people does not walk a parsed template once per person for it."""

    text: str

    def render(self, variables: Mapping[str, object], memo: Memo) -> str:
        return self.text


@dataclass(frozen=True)
class Whole:
    """A field whose statements share state (an `assign` read further on, a `cycle`):
    only a render of the whole template in one pass gets it right."""

    template: BoundTemplate

    def render(self, variables: Mapping[str, object], memo: Memo) -> str:
        return self.template.render(variables)


class _Rendering:
    """One field being rendered for one person. The Liquid context, which costs more than
    most statements, is made for the first statement that Liquid has to render."""

    __slots__ = ("_context", "template", "variables")

    def __init__(self, template: BoundTemplate, variables: Mapping[str, object]) -> None:
        self.template = template
        self.variables = variables
        self._context: RenderContext | None = None

    def statement(self, alone: BoundTemplate) -> str:
        """Render a template of one statement of this field, as Liquid renders it in place."""
        if self._context is None:
            globals_ = self.template.make_globals(self.variables)
            self._context = self.template.context_class(self.template, globals=globals_)
        buffer = LimitedStringIO(limit=OUTPUT_LIMIT)
        alone.render_with_context(self._context, buffer)
        return buffer.getvalue()


@dataclass(frozen=True, eq=False)
class _Statement:
    """A statement Liquid renders for every person: it reads the clock, say."""

    alone: BoundTemplate

    def output(self, rendering: _Rendering, memo: Memo) -> str:
        return rendering.statement(self.alone)


@dataclass(frozen=True, eq=False)
class _Echo:
    """`{{ a.b }}` without filters: when each step of the path is a key of a dict, the
    value is read directly and stringified by Liquid's own function, else Liquid renders it."""

    path: tuple[str, ...]
    autoescape: bool
    alone: BoundTemplate

    def output(self, rendering: _Rendering, memo: Memo) -> str:
        value = _lookup(rendering.variables, self.path)
        if value is _UNRESOLVED:
            return rendering.statement(self.alone)
        return to_liquid_string(value, self.autoescape)


@dataclass(frozen=True, eq=False)
class _Recalled:
    """A statement whose output is a function of the values at `paths` (it has pure
    filters only and no state): rendered once per distinct values, then recalled."""

    paths: tuple[tuple[str, ...], ...]
    alone: BoundTemplate

    def output(self, rendering: _Rendering, memo: Memo) -> str:
        try:
            key = (self, tuple(_frozen_at(rendering.variables, path) for path in self.paths))
        except _Unfreezable:
            return rendering.statement(self.alone)
        text = memo.get(key)
        if text is None:
            text = rendering.statement(self.alone)
            memo.put(key, text)
        return text


Part = str | _Statement | _Echo | _Recalled


@dataclass(frozen=True)
class Pieced:
    """A field of self-contained statements, rendered one top-level piece at a time (see
    the module's "Speed"). Whenever a piece fails, or the output is over the limit, Liquid
    renders the whole field instead, and so raises exactly the error it always raised."""

    template: BoundTemplate
    parts: tuple[Part, ...]

    def render(self, variables: Mapping[str, object], memo: Memo) -> str:
        text = self._pieced(variables, memo)
        return self.template.render(variables) if text is None else text

    def _pieced(self, variables: Mapping[str, object], memo: Memo) -> str | None:
        """The pieces' outputs joined; None when a piece failed, or the text is over the
        limit or cannot be encoded (what Liquid's output stream checks as it writes)."""
        rendering = _Rendering(self.template, variables)
        try:
            text = "".join(
                [
                    part if isinstance(part, str) else part.output(rendering, memo)
                    for part in self.parts
                ]
            )
            size = len(text.encode())
        except Exception:  # the whole render raises it again, placed by Liquid
            return None
        return text if size <= OUTPUT_LIMIT else None


@dataclass(frozen=True)
class MessageTemplate:
    """A campaign's compiled fields; `render` is safe to call from several threads."""

    templates: Mapping[str, Field]

    def render(self, variables: Mapping[str, object], memo: Memo | None = None) -> Rendered:
        """Render every field for one person; a RenderError names the field at fault.

        Pass the campaign's `memo` (`TemplateCache.memo`) for the people of a send: a
        statement that reads the same values for two of them is rendered once.
        """
        memo = Memo() if memo is None else memo
        out = {field: self._render_field(field, variables, memo) for field in self.templates}
        return Rendered(
            from_address=out["from"] or "",
            reply_to=out.get("reply_to") or None,
            subject=out["subject"] or "",
            text=out.get("text"),
            html=out.get("html"),
        )

    def _render_field(self, field: str, variables: Mapping[str, object], memo: Memo) -> str:
        try:
            value = self.templates[field].render(variables, memo)
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
        templates[field] = _field(compiled) if _MARKUP.search(source) else Constant(source)
    return MessageTemplate(templates)


def _field(template: BoundTemplate) -> Field:
    analysis = template.analyze(include_partials=False)
    if not set(analysis.tags) <= SELF_CONTAINED_TAGS or _continues_a_loop(template):
        return Whole(template)
    return Pieced(template, tuple(_part(template.env, node) for node in template.nodes))


def _continues_a_loop(template: BoundTemplate) -> bool:
    """Whether a `for` starts where an earlier loop stopped (`offset: continue`), which
    only a render of the whole field in one pass knows."""
    context = RenderContext(template)
    return any(
        isinstance(expression, LoopExpression)
        and isinstance(expression.offset, StringLiteral)
        and expression.offset.value == "continue"
        for top in template.nodes
        for node in _subtree(top, context)
        for expression in node.expressions()
    )


def _subtree(node: Node, context: RenderContext) -> Iterator[Node]:
    yield node
    for child in node.children(context, include_partials=False):
        yield from _subtree(child, context)


def _part(environment: Environment, node: Node) -> Part:
    """How one top-level statement is rendered for each person."""
    if type(node) is ContentNode:
        return node.text
    alone = environment.template_class(environment, [node])
    analysis = alone.analyze(include_partials=False)
    if not set(analysis.filters) <= PURE_FILTERS or CLOCK_VARIABLES.intersection(analysis.globals):
        return _Statement(alone)
    path = _echoed_path(node)
    if path is not None:
        return _Echo(path, environment.autoescape, alone)
    return _Recalled(_paths_read(analysis), alone)


def _echoed_path(node: Node) -> tuple[str, ...] | None:
    """The path of a `{{ a.b }}` that Liquid resolves by key lookups alone, if it is one."""
    if type(node) is not OutputNode:
        return None
    expression = node.expression
    if type(expression) is not FilteredExpression or expression.filters:
        return None
    if type(expression.left) is not Path:
        return None
    path = expression.left.path
    if not all(isinstance(segment, str) for segment in path) or path[0] in LIQUID_VARIABLES:
        return None
    if COMPUTED_SEGMENTS.intersection(path[1:]):
        return None
    return tuple(str(segment) for segment in path)


def _paths_read(analysis: TemplateAnalysis) -> tuple[tuple[str, ...], ...]:
    """The paths whose values determine a statement's output: of each variable it reads,
    the leading segments that are plain keys (what follows is a function of the value
    there), leaving out a path that a shorter one already covers."""
    prefixes = sorted(
        {
            _key_prefix(variable.segments)
            for variables in analysis.globals.values()
            for variable in variables
        },
        key=len,
    )
    kept: list[tuple[str, ...]] = []
    for prefix in prefixes:
        if not any(prefix[: len(shorter)] == shorter for shorter in kept):
            kept.append(prefix)
    return tuple(kept)


def _key_prefix(segments: Segments) -> tuple[str, ...]:
    prefix: list[str] = []
    for index, segment in enumerate(segments):
        if not isinstance(segment, str) or (index and segment in COMPUTED_SEGMENTS):
            break
        prefix.append(segment)
    return tuple(prefix)


_UNRESOLVED = object()
_ABSENT = object()
_STOPPED = object()


class _Unfreezable(Exception):
    """A value of a type that `_frozen` does not know to compare by content."""


def _lookup(variables: Mapping[str, object], path: tuple[str, ...]) -> object:
    """The value at `path` when each step is a key of a dict, else `_UNRESOLVED`."""
    value: object = variables
    for name in path:
        if type(value) is not dict or name not in value:
            return _UNRESOLVED
        value = value[name]
    return value


def _frozen_at(variables: Mapping[str, object], path: tuple[str, ...]) -> Hashable:
    """What Liquid can see of the value at `path`, hashable: where the walk stops (a key
    missing, or a value that is not a dict) is part of it."""
    value: object = variables
    for depth, name in enumerate(path):
        if type(value) is not dict:
            return (_STOPPED, depth, _frozen(value))
        if name not in value:
            return (_ABSENT, depth)
        value = value[name]
    return _frozen(value)


def _frozen(value: object) -> Hashable:
    """A JSON-like value as a hashable that is equal only for a value Liquid cannot tell
    apart: with its type (1, 1.0 and true are equal in Python, not in output), its order
    (a loop over a hash follows it) and a float by its repr (-0.0 prints differently)."""
    kind = type(value)
    if kind is str:
        return value
    if isinstance(value, dict) and kind is dict:
        return (dict, tuple(zip(map(_frozen, value), map(_frozen, value.values()), strict=True)))
    if isinstance(value, list) and kind is list:
        return (list, tuple(map(_frozen, value)))
    if kind is float:
        return (float, repr(value))
    if kind is int or kind is bool or value is None:
        return (kind, value)
    raise _Unfreezable(kind.__name__)


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


Value = TypeVar("Value")


class _Recent(Generic[Value]):
    """The `size` values used last, by key. A missing value is made outside the lock, so
    that one slow compile does not hold up the threads that need another."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, Value] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Value]) -> Value:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = make()
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value


class TemplateCache:
    """Compiled messages by (campaign id, updated_at): an edit changes the key, so no
    stale template is ever rendered, and an unchanged campaign is parsed once per process.
    Beside them, the memos of the campaigns rendered last, so that a send's batches share
    what its people's messages have in common."""

    def __init__(self, size: int = CACHE_SIZE, memos: int = MEMO_CACHE_SIZE) -> None:
        self._compiled = _Recent[MessageTemplate](size)
        self._memos = _Recent[Memo](memos)

    def get(
        self, campaign_id: int, updated_at: datetime, message: Mapping[str, str | None]
    ) -> MessageTemplate:
        return self._compiled.get((campaign_id, updated_at), lambda: compile_message(message))

    def memo(self, campaign_id: int, updated_at: datetime) -> Memo:
        return self._memos.get((campaign_id, updated_at), Memo)


templates = TemplateCache()

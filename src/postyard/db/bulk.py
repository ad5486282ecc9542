"""One statement run for many rows, with the parameters handed to the driver as it takes them.

For an executemany SQLAlchemy builds, for every row, a dictionary of all the statement's
bound parameters and runs each value through its type's processor. For the outbox's rows
that cost more than the database took to write them: queueing 20,000 messages on SQLite
spent ~97 µs of CPU per message through `Session.execute` against ~40 µs for the same
statements run by the driver directly (bench/README.md). A `Bulk` statement is compiled once
per dialect; each row then becomes the driver's tuple (or dictionary) in one pass, through
the same type processors, so what is stored is exactly what SQLAlchemy would have stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    """The parameters in the order the driver takes them."""
    template: tuple[Any, ...]
    """The values fixed in the statement (a literal in a WHERE clause, say), processed once;
    the per-row values go in the other places."""
    per_row: tuple[int, ...]
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]
    positional: bool

    def rows(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The rows as the driver takes them; a missing key is a KeyError naming it.

        A value that is the very object of the row before (the batch's one timestamp, say)
        reuses that row's processed value."""
        get = _getter([self.names[index] for index in self.per_row])
        whole = len(self.per_row) == len(self.names)  # no fixed values to place around them
        last: list[tuple[Any, Any]] = [(_NOTHING, None)] * len(self.processors)
        prepared: list[Any] = []
        for row in rows:
            if whole:
                values = list(get(row))
            else:
                values = list(self.template)
                for index, value in zip(self.per_row, get(row), strict=True):
                    values[index] = value
            for slot, (index, process) in enumerate(self.processors):
                value = values[index]
                before, processed = last[slot]
                if value is not before:
                    processed = process(value)
                    last[slot] = (value, processed)
                values[index] = processed
            prepared.append(
                tuple(values) if self.positional else dict(zip(self.names, values, strict=True))
            )
        return prepared


_NOTHING = object()


def _getter(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if len(names) == 1:
        [name] = names
        return lambda row: (row[name],)
    return itemgetter(*names)


class Bulk:
    """A Core INSERT or UPDATE executed for a list of rows, each a mapping of the statement's
    per-row parameters by name: bound parameters without a value (`bindparam("name")`), or,
    for `insert(table)`, the columns, named by the first row's keys. Columns with a
    Python-side default must be given too: the default is not run for each row here."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}

    def execute(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        dialect = connection.dialect
        key = (dialect.name, tuple(rows[0]))
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compile(dialect, key[1])
        connection.exec_driver_sql(compiled.sql, compiled.rows(rows))

    def _compile(self, dialect: Dialect, keys: Sequence[str]) -> _Compiled:
        compiled = self.statement.compile(
            dialect=dialect, column_keys=list(keys), for_executemany=True
        )
        if compiled.escaped_bind_names:
            raise ValueError("a Bulk statement's parameter names must not need escaping")
        defaulted = {
            column.key for column in (*compiled.insert_prefetch, *compiled.update_prefetch)
        }
        names = tuple(compiled.positiontup or dict.fromkeys(compiled.bind_names.values()))
        template: list[Any] = []
        per_row: list[int] = []
        processors: list[tuple[int, Callable[[Any], Any]]] = []
        for index, name in enumerate(names):
            bind = compiled.binds[name]
            if bind.expanding or bind.callable is not None:
                raise ValueError(f"parameter {name!r}: IN lists and callables are not supported")
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.required or name in defaulted:
                template.append(None)
                per_row.append(index)
                if process is not None:
                    processors.append((index, process))
            else:
                template.append(bind.value if process is None else process(bind.value))
        return _Compiled(
            sql=compiled.string,
            names=names,
            template=tuple(template),
            per_row=tuple(per_row),
            processors=tuple(processors),
            positional=compiled.positiontup is not None,
        )

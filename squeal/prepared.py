"""Statements compiled once per dialect and run straight on a DB-API cursor.

The hot path (put, claim, ack) skips SQLAlchemy's per-execution machinery: the SQL text, the
parameter order and the bind processors are worked out once, from the same Core constructs the
rest of squeal uses, so the database still sees exactly what SQLAlchemy would send.

Parameters always go to the driver as a list in statement order: named ``%(name)s`` markers are
rewritten to ``%s`` once, so a driver formats only the values the statement uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

_POSTCOMPILE = "__[POSTCOMPILE_{}]"
#: A literal ``%%`` (kept), a named marker (rewritten to %s) or an expanding list's
#: placeholder (kept), in text order.
_MARKERS = re.compile(r"%%|%\(([^)]+)\)s|__\[POSTCOMPILE_([^\]]+)\]")

Processor = Callable[[Any], Any]


class Prepared:
    """One compiled statement; :meth:`bind` turns values into (sql, parameters)."""

    __slots__ = (
        "_defaults",
        "_expanding",
        "_get",
        "_mark",
        "_order",
        "_positions",
        "_processors",
        "_sql",
        "_variants",
    )

    def __init__(self, statement: sa.Executable, dialect: sa.Dialect) -> None:
        compiled = cast(SQLCompiler, cast(sa.ClauseElement, statement).compile(dialect=dialect))
        if dialect.paramstyle == "pyformat":
            self._sql, self._order = _positional(compiled.string, compiled.escaped_bind_names)
        elif dialect.paramstyle in ("qmark", "format"):
            self._sql, self._order = compiled.string, list(compiled.positiontup or [])
        else:
            raise NotImplementedError(f"paramstyle {dialect.paramstyle!r} is not supported")
        self._mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self._defaults: dict[str, Any] = {
            name: bind.effective_value
            for name, bind in compiled.binds.items()
            if not bind.required and not bind.expanding
        }
        self._expanding = [name for name, bind in compiled.binds.items() if bind.expanding]
        processors: dict[str, tuple[Processor, bool]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                # A driver takes bytes as binary as they are; the processor only wraps them.
                processors[name] = (processor, isinstance(bind.type, sa.types._Binary))
        self._processors = processors
        #: (position, processor, skip bytes) for each parameter a processor converts.
        self._positions = [
            (i, *processors[name])
            for i, name in enumerate(self._order)
            if name in processors and name not in self._expanding
        ]
        self._get = _getter(self._order)
        self._variants: dict[tuple[int, ...], str] = {}

    def bind(self, values: Mapping[str, Any]) -> tuple[str, Sequence[Any]]:
        """The SQL text and driver parameters for ``values``."""
        params = {**self._defaults, **values} if self._defaults else values
        if self._expanding:
            return self._bind_expanding(params)
        flat = self._get(params)
        for i, processor, binary in self._positions:
            value = flat[i]
            if value is not None and not (binary and type(value) is bytes):
                flat[i] = processor(value)
        return self._sql, flat

    def _bind_expanding(self, params: Mapping[str, Any]) -> tuple[str, Sequence[Any]]:
        lengths = tuple(len(params[name]) for name in self._expanding)
        if any(n == 0 for n in lengths):
            raise ValueError("an expanding IN list must not be empty")
        sql = self._variants.get(lengths)
        if sql is None:
            sql = self._sql
            for name, n in zip(self._expanding, lengths, strict=True):
                sql = sql.replace(_POSTCOMPILE.format(name), ", ".join([self._mark] * n))
            self._variants[lengths] = sql
        flat: list[Any] = []
        for name in self._order:
            processor, binary = self._processors.get(name, (None, False))
            given = params[name]
            if name in self._expanding:
                flat.extend(_processed(v, processor, binary) for v in given)
            else:
                flat.append(_processed(given, processor, binary))
        return sql, flat


def _processed(value: Any, processor: Processor | None, binary: bool) -> Any:
    if processor is None or value is None or (binary and type(value) is bytes):
        return value
    return processor(value)


def _positional(sql: str, escaped: Mapping[str, str]) -> tuple[str, list[str]]:
    """``sql`` with %(name)s markers as %s, and the parameter names in text order.

    ``escaped`` maps names SQLAlchemy had to escape in the text to the escaped spelling.
    """
    original = {spelled: name for name, spelled in escaped.items()}
    order = [
        original.get(named or expanding, named or expanding)
        for named, expanding in _MARKERS.findall(sql)
        if named or expanding
    ]
    return _MARKERS.sub(lambda m: "%s" if m.group(1) else m.group(0), sql), order


def _getter(order: list[str]) -> Callable[[Mapping[str, Any]], list[Any]]:
    """A function giving the values of ``order`` from a mapping, as a new list."""
    if not order:
        return lambda params: []
    if len(order) == 1:
        name = order[0]
        return lambda params: [params[name]]
    get = itemgetter(*order)
    return lambda params: list(get(params))


__all__ = ["Prepared"]

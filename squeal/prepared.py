"""Statements compiled once per dialect and run straight on a DB-API cursor.

The hot path (put, claim, ack) skips SQLAlchemy's per-execution machinery: the SQL text, the
parameter order and the bind processors are worked out once, from the same Core constructs the
rest of squeal uses, so the database still sees exactly what SQLAlchemy would send.

Parameters go to the driver in statement order: named ``%(name)s`` markers are rewritten to
``%s`` once, so a driver formats only the values the statement uses. Every paramstyle a driver
may declare is spoken: ``format``, ``pyformat`` and ``qmark`` as SQLAlchemy compiles them;
``numeric`` (``:1``), ``numeric_dollar`` (``$1``, asyncpg) and ``named`` (``:p1``, with the
parameters as a mapping) are rendered from the ``format`` text, numbering the markers in order
(after an IN list is expanded, so the numbers stay consecutive).
"""

from __future__ import annotations

import copy
import itertools
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
#: What a driver's ``execute`` takes: values in marker order, or by name for ``named``.
Params = Sequence[Any] | Mapping[str, Any]
#: A ``format`` marker (rewritten) or an escaped percent sign (unescaped), in text order.
_FORMAT_MARKS = re.compile(r"%%|%s")
#: The marker each rendered paramstyle puts where ``format`` has its n-th ``%s``.
_NUMBERED = {"numeric": ":{}", "numeric_dollar": "${}", "named": ":p{}"}


class Prepared:
    """One compiled statement; :meth:`bind` turns values into (sql, parameters)."""

    __slots__ = (
        "_defaults",
        "_expanding",
        "_get",
        "_mark",
        "_named",
        "_order",
        "_positions",
        "_processors",
        "_render",
        "_sql",
        "_text",
        "_variants",
    )

    def __init__(self, statement: sa.Executable, dialect: sa.Dialect) -> None:
        style = dialect.paramstyle
        marker = _NUMBERED.get(style)
        if marker is None and style not in ("pyformat", "qmark", "format"):
            raise NotImplementedError(
                f"paramstyle {style!r} is not supported (supported: format, pyformat, qmark, "
                f"{', '.join(_NUMBERED)})"
            )
        #: Compiled as ``format`` for the numbered styles, then rendered in ``style``.
        base = dialect if marker is None else _as_format(dialect)
        compiled = cast(SQLCompiler, cast(sa.ClauseElement, statement).compile(dialect=base))
        if base.paramstyle == "pyformat":
            text, self._order = _positional(compiled.string, compiled.escaped_bind_names)
        else:
            text, self._order = compiled.string, list(compiled.positiontup or [])
        self._mark = "?" if style == "qmark" else "%s"
        #: The statement as compiled (markers ``self._mark``); IN lists are expanded in it.
        self._text = text
        self._render: Callable[[str], str] | None = None
        self._named = style == "named"
        if marker is not None:
            self._render = lambda sql: number_markers(sql, marker)
        self._sql = text if self._render is None else self._render(text)
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

    def bind(self, values: Mapping[str, Any]) -> tuple[str, Params]:
        """The SQL text and driver parameters for ``values``."""
        params = {**self._defaults, **values} if self._defaults else values
        if self._expanding:
            return self._bind_expanding(params)
        flat = self._get(params)
        for i, processor, binary in self._positions:
            value = flat[i]
            if value is not None and not (binary and type(value) is bytes):
                flat[i] = processor(value)
        if self._named:
            return self._sql, _by_position(flat)
        return self._sql, flat

    def _bind_expanding(self, params: Mapping[str, Any]) -> tuple[str, Params]:
        lengths = tuple(len(params[name]) for name in self._expanding)
        if any(n == 0 for n in lengths):
            raise ValueError("an expanding IN list must not be empty")
        sql = self._variants.get(lengths)
        if sql is None:
            sql = self._text
            for name, n in zip(self._expanding, lengths, strict=True):
                sql = sql.replace(_POSTCOMPILE.format(name), ", ".join([self._mark] * n))
            if self._render is not None:
                sql = self._render(sql)
            self._variants[lengths] = sql
        flat: list[Any] = []
        for name in self._order:
            processor, binary = self._processors.get(name, (None, False))
            given = params[name]
            if name in self._expanding:
                if processor is None:
                    flat.extend(given)  # an ack_many's ids: as they are
                else:
                    flat.extend(_processed(v, processor, binary) for v in given)
            else:
                flat.append(_processed(given, processor, binary))
        if self._named:
            return sql, _by_position(flat)
        return sql, flat


def _as_format(dialect: sa.Dialect) -> sa.Dialect:
    """``dialect`` compiling ``%s`` markers (the same types, processors and SQL otherwise)."""
    base = copy.copy(dialect)
    base.paramstyle = "format"
    base.positional = True
    # A preparer of its own: it doubles literal percent signs for ``format`` (the original's,
    # made for qmark, would leave a literal '%s' to be taken for a marker).
    base.identifier_preparer = type(dialect.identifier_preparer)(base)
    return base


def number_markers(sql: str, marker: str) -> str:
    """``format`` text with its n-th ``%s`` as ``marker.format(n)`` and ``%%`` as ``%``."""
    counter = itertools.count(1)
    return _FORMAT_MARKS.sub(
        lambda m: "%" if m.group() == "%%" else marker.format(next(counter)), sql
    )


def _by_position(flat: Sequence[Any]) -> dict[str, Any]:
    """Parameters for the ``named`` markers ``:p1``, ``:p2`` ...: a mapping."""
    return {f"p{i}": value for i, value in enumerate(flat, 1)}


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


__all__ = ["Params", "Prepared", "number_markers"]

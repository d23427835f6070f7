"""Statements compiled once per dialect and run straight on a DB-API cursor.

The hot path (put, claim, ack) skips SQLAlchemy's per-execution machinery: the SQL text, the
parameter order and the bind processors are worked out once, from the same Core constructs the
rest of squeal uses, so the database still sees exactly what SQLAlchemy would send.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

_POSTCOMPILE = "__[POSTCOMPILE_{}]"


class Prepared:
    """One compiled statement; :meth:`bind` turns values into (sql, parameters)."""

    __slots__ = (
        "_defaults",
        "_expanding",
        "_mark",
        "_named",
        "_order",
        "_processors",
        "_sql",
        "_variants",
    )

    def __init__(self, statement: sa.Executable, dialect: sa.Dialect) -> None:
        compiled = cast(SQLCompiler, cast(sa.ClauseElement, statement).compile(dialect=dialect))
        self._sql = compiled.string
        self._named = not dialect.positional
        if dialect.paramstyle not in ("qmark", "format", "pyformat"):
            raise NotImplementedError(f"paramstyle {dialect.paramstyle!r} is not supported")
        self._mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self._order: list[str] = list(compiled.positiontup or [])
        self._defaults: dict[str, Any] = {
            name: bind.effective_value
            for name, bind in compiled.binds.items()
            if not bind.required and not bind.expanding
        }
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors[name] = processor
        self._expanding = [name for name, bind in compiled.binds.items() if bind.expanding]
        self._variants: dict[tuple[int, ...], str] = {}

    @property
    def sql(self) -> str:
        """The SQL text (with expanding lists not yet rendered)."""
        return self._sql

    def bind(self, values: Mapping[str, Any]) -> tuple[str, Sequence[Any] | dict[str, Any]]:
        """The SQL text and driver parameters for ``values``."""
        params = dict(self._defaults)
        params.update(values)
        processors = self._processors
        for name, processor in processors.items():
            value = params.get(name)
            if value is not None and name not in self._expanding:
                params[name] = processor(value)
        if self._expanding:
            return self._bind_expanding(params)
        if self._named:
            return self._sql, params
        return self._sql, [params[name] for name in self._order]

    def _bind_expanding(self, params: dict[str, Any]) -> tuple[str, Sequence[Any] | dict[str, Any]]:
        lengths = tuple(len(params[name]) for name in self._expanding)
        if any(n == 0 for n in lengths):
            raise ValueError("an expanding IN list must not be empty")
        sql = self._variants.get(lengths)
        if sql is None:
            sql = self._sql
            for name, n in zip(self._expanding, lengths, strict=True):
                if self._named:
                    marks = ", ".join(f"%({name}_{i})s" for i in range(n))
                else:
                    marks = ", ".join([self._mark] * n)
                sql = sql.replace(_POSTCOMPILE.format(name), marks)
            self._variants[lengths] = sql
        processor = None
        if self._named:
            named = {k: v for k, v in params.items() if k not in self._expanding}
            for name in self._expanding:
                processor = self._processors.get(name)
                for i, value in enumerate(params[name]):
                    named[f"{name}_{i}"] = processor(value) if processor else value
            return sql, named
        flat: list[Any] = []
        for name in self._order:
            if name in self._expanding:
                processor = self._processors.get(name)
                flat.extend(processor(v) if processor else v for v in params[name])
            else:
                flat.append(params[name])
        return sql, flat


__all__ = ["Prepared"]

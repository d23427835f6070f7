"""The exception hierarchy, missing tables, and database errors that never show parameters."""

from __future__ import annotations

import traceback
from collections.abc import Callable

import pytest
import sqlalchemy as sa

import squeal
import squeal.errors
from squeal import Queue

ERROR_CLASSES = [getattr(squeal.errors, name) for name in squeal.errors.__all__]


def test_every_error_class_subclasses_squeal_error_and_is_exported() -> None:
    assert squeal.errors.SquealError in ERROR_CLASSES
    for cls in ERROR_CLASSES:
        assert issubclass(cls, squeal.errors.SquealError), cls
        assert issubclass(cls, Exception), cls
        assert getattr(squeal, cls.__name__) is cls, f"{cls.__name__} not re-exported"
        assert cls.__name__ in squeal.__all__, cls


def test_every_error_class_has_a_docstring_that_is_its_default_message() -> None:
    for cls in ERROR_CLASSES:
        doc = (cls.__doc__ or "").strip()
        assert doc, f"{cls.__name__} has no docstring"
        assert str(cls()) == doc, cls


def test_validation_errors_are_also_builtin_value_and_type_errors() -> None:
    assert issubclass(squeal.ValidationError, ValueError)
    assert issubclass(squeal.PayloadTooLarge, squeal.ValidationError)
    assert issubclass(squeal.PayloadTooLarge, ValueError)
    assert issubclass(squeal.InvalidType, TypeError)
    assert issubclass(squeal.AlreadySettled, RuntimeError)
    assert issubclass(squeal.SchemaMissing, squeal.SchemaError)
    assert issubclass(squeal.SchemaOutOfDate, squeal.SchemaError)
    assert issubclass(squeal.DatabaseBusy, squeal.DatabaseError)


def test_lease_lost_names_the_message() -> None:
    assert squeal.LeaseLost("gone", message_id=42).message_id == 42


def test_queue_on_missing_tables_raises_schema_missing_naming_squeal_migrate(
    engine: sa.Engine, prefix: str
) -> None:
    q = Queue(engine, prefix=prefix)
    operations: dict[str, Callable[[], object]] = {
        "put": lambda: q.put(b"x", "t"),
        "put_many": lambda: q.put_many([b"x"], "t"),
        "get": lambda: q.get("t"),
        "get_many": lambda: q.get_many("t", 5),
        "size": lambda: q.size("t"),
        "topics": q.topics,
        "stats": q.stats,
        "dead": lambda: q.dead("t"),
        "redrive": lambda: q.redrive("t"),
        "purge": lambda: q.purge("t"),
    }
    for name, operation in operations.items():
        with pytest.raises(squeal.SchemaMissing) as raised:
            operation()
        assert "squeal migrate" in str(raised.value), name
        assert "squeal migrate" in raised.value.command, name
    q.close()
    assert not [t for t in sa.inspect(engine).get_table_names() if t.startswith(prefix)]


def test_put_with_connection_on_missing_tables_raises_schema_missing(
    engine: sa.Engine, prefix: str
) -> None:
    q = Queue(engine, prefix=prefix)
    with engine.connect() as conn, pytest.raises(squeal.SchemaMissing, match="squeal migrate"):
        q.put(b"x", "t", connection=conn)


def test_queue_works_after_create_following_schema_missing(engine: sa.Engine, prefix: str) -> None:
    q = Queue(engine, prefix=prefix)
    with pytest.raises(squeal.SchemaMissing):
        q.size("t")
    q.create()
    try:
        q.put(b"x", "t")
        assert q.size("t") == 1
    finally:
        q.destroy()
        q.close()


MARKER = "zq-secret-marker-7f3a"


def _assert_hidden(exc: BaseException) -> None:
    shown = [
        str(exc),
        repr(exc),
        repr(exc.__cause__),
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    ]
    for text in shown:
        assert MARKER not in text, text


def test_database_errors_are_wrapped_without_bound_parameters(
    engine: sa.Engine, prefix: str
) -> None:
    owner = Queue(engine, prefix=prefix)
    owner.create()
    user = Queue(engine, prefix=prefix)
    try:
        user.put(b"warm-up", "t")
        msg = user.get("t")
        assert msg is not None
    finally:
        owner.destroy()  # the tables vanish behind the user's back
    failing: dict[str, Callable[[], object]] = {
        "put payload": lambda: user.put(f"payload {MARKER}".encode(), "t"),
        "put topic": lambda: user.put(b"x", f"topic {MARKER}"),
        "put dedup_key": lambda: user.put(b"x", "t", dedup_key=f"key {MARKER}"),
        "put_many": lambda: user.put_many([b"a", f"{MARKER}".encode()], "t"),
        "get topic": lambda: user.get(f"topic {MARKER}"),
        "size topic": lambda: user.size(f"topic {MARKER}"),
    }
    try:
        for name, operation in failing.items():
            with pytest.raises(squeal.DatabaseError) as raised:
                operation()
            assert isinstance(raised.value, squeal.SquealError), name
            assert str(raised.value), name
            _assert_hidden(raised.value)
        with pytest.raises(squeal.DatabaseError) as raised:
            msg.ack()
        _assert_hidden(raised.value)
    finally:
        user.close()
        owner.close()

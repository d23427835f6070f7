"""Transactional outbox: a put in the caller's transaction exists only if it commits."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import orm

from squeal import Queue


@pytest.fixture
def orders(engine: sa.Engine, prefix: str) -> Iterator[type]:
    """An ORM model of the application's own, in this test's prefix."""

    class Base(orm.DeclarativeBase):
        pass

    class Order(Base):
        __tablename__ = f"{prefix}_orders"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        item: orm.Mapped[str] = orm.mapped_column(sa.String(50))

    Order.__table__.create(engine)  # type: ignore[attr-defined]
    yield Order
    Order.__table__.drop(engine)  # type: ignore[attr-defined]


def test_core_put_is_delivered_after_commit(
    make_queue: Callable[..., Queue], engine: sa.Engine
) -> None:
    q = make_queue()
    with engine.begin() as conn:
        q.put(b"order placed", "orders", connection=conn)
    msg = q.get("orders")
    assert msg is not None
    assert msg.payload == b"order placed"
    msg.ack()


def test_core_put_rolled_back_is_never_seen(
    make_queue: Callable[..., Queue], engine: sa.Engine
) -> None:
    q = make_queue()
    with engine.connect() as conn, conn.begin():
        q.put_many([b"a", b"b"], "orders", connection=conn)
        conn.rollback()
    assert q.get("orders") is None
    assert q.stats() == {}


def test_orm_session_commit_delivers_the_message_with_the_row(
    make_queue: Callable[..., Queue], engine: sa.Engine, orders: type
) -> None:
    q = make_queue()
    with orm.Session(engine) as session:
        session.add(orders(id=1, item="book"))
        session.flush()
        q.put(b"order 1", "orders", connection=session.connection())
        session.commit()
    msg = q.get("orders")
    assert msg is not None
    assert msg.payload == b"order 1"
    msg.ack()
    with orm.Session(engine) as session:
        assert session.get(orders, 1) is not None


def test_orm_session_rollback_drops_both_row_and_message(
    make_queue: Callable[..., Queue], engine: sa.Engine, orders: type
) -> None:
    q = make_queue()
    with orm.Session(engine) as session:
        session.add(orders(id=2, item="pen"))
        session.flush()
        q.put(b"order 2", "orders", connection=session.connection())
        session.rollback()
    assert q.get("orders") is None
    with orm.Session(engine) as session:
        assert session.get(orders, 2) is None


@pytest.mark.dialects("postgresql", "mysql")  # SQLite: squeal's read waits for the writer
def test_orm_message_is_invisible_until_the_session_commits(
    make_queue: Callable[..., Queue], engine: sa.Engine, orders: type
) -> None:
    q = make_queue()
    with orm.Session(engine) as session:
        q.put(b"pending", "orders", connection=session.connection())
        assert q.peek("orders") == []
        session.commit()
    assert [m.payload for m in q.peek("orders")] == [b"pending"]

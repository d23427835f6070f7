"""Transactional outbox with the SQLAlchemy ORM: the message exists only if the order does.

Run:  python examples/outbox_orm.py [--url URL]

``put(..., connection=session.connection())`` writes the message in the Session's transaction:
commit and both the row and the message exist; roll back and neither does. The example works on
tables of its own (prefix ``example_outbox``, orders in ``example_outbox_orders``) and drops them
at the end only if this run created them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import orm

from squeal import Queue, migrate


class Base(orm.DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "example_outbox_orders"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    item: orm.Mapped[str] = orm.mapped_column(sa.String(100))


def place_order(session: orm.Session, queue: Queue, item: str) -> Order:
    order = Order(item=item)
    session.add(order)
    session.flush()  # assigns order.id
    queue.put(f"order {order.id}: {item}".encode(), topic="orders", connection=session.connection())
    return order


def main(url: str) -> None:
    engine = sa.create_engine(url)
    created = migrate.current(engine, prefix="example_outbox") is None  # ours to drop
    created_orders = not sa.inspect(engine).has_table(Order.__tablename__)
    queue = Queue(engine, prefix="example_outbox")
    queue.create()
    Base.metadata.create_all(engine)
    try:
        with orm.Session(engine) as session:
            place_order(session, queue, "book")
            session.commit()  # the order and its message, together

        with orm.Session(engine) as session:
            place_order(session, queue, "faulty")
            session.rollback()  # neither the order nor its message

        while (msg := queue.get("orders")) is not None:
            print("delivered:", msg.payload.decode())
            msg.ack()
        with orm.Session(engine) as session:
            print("orders in the table:", [o.item for o in session.scalars(sa.select(Order))])
    finally:
        if created_orders:
            Base.metadata.drop_all(engine)
        if created:
            queue.destroy()
        queue.close()
        engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    default = f"sqlite:///{Path(tempfile.mkdtemp()) / 'outbox.db'}"
    parser.add_argument("--url", default=default, help="SQLAlchemy URL (default: temp SQLite)")
    main(parser.parse_args().url)

"""The raw queue rows of ``squeal bench --celery``: one client, 64-byte messages, one at a time.

``put``: each message durable when the call returns. ``get + ack``: each message claimed, then
acknowledged, one at a time. Per broker:

* squeal (each ``--url``): ``put``; ``get`` + ``ack`` (each a commit, the database's durability).
* RabbitMQ (``amqp://``): a durable queue, persistent messages (delivery mode 2) with publisher
  confirms (each publish waits for its confirm); ``basic_get`` + manual ``basic_ack`` (RabbitMQ
  does not sync an ack to disk before answering).
* Redis (``redis://``): the reliable-queue pattern: ``LPUSH``; ``LMOVE`` to a processing list,
  then ``LREM`` from it as the ack (durability: whatever the server's ``appendfsync`` is).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa

from squeal import Queue

PAYLOAD = b"x" * 64


def _rate(count: int, step: Callable[[], object]) -> int:
    started = time.perf_counter()
    for _ in range(count):
        step()
    return round(count / (time.perf_counter() - started))


def squeal_rows(url: sa.URL, count: int) -> dict[str, Any]:
    """squeal's put, and get + ack, on ``url``."""
    queue = Queue(sa.create_engine(url), prefix=f"bench_{secrets.token_hex(4)}")
    queue.create()
    try:
        put = _rate(count, lambda: queue.put(PAYLOAD, "raw"))

        def get_ack() -> None:
            message = queue.get("raw")
            assert message is not None
            message.ack()

        return {"put": put, "get_ack": _rate(count, get_ack)}
    finally:
        queue.destroy()
        queue.close()
        queue.engine.dispose()


def rabbitmq_rows(url: str, count: int) -> dict[str, Any]:
    """RabbitMQ: persistent messages with publisher confirms; basic_get + basic_ack."""
    import amqp  # type: ignore[import-untyped]  # Celery's own AMQP client

    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) or "/"
    conn = amqp.Connection(
        host=f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=vhost,
    )
    conn.connect()
    channel = conn.channel()
    name = f"bench_{secrets.token_hex(4)}"
    try:
        channel.confirm_select()  # every basic_publish now waits for the broker's confirm
        channel.queue_declare(name, durable=True, auto_delete=False)
        put = _rate(
            count,
            lambda: channel.basic_publish(amqp.Message(PAYLOAD, delivery_mode=2), routing_key=name),
        )

        def get_ack() -> None:
            message = channel.basic_get(name)
            assert message is not None
            channel.basic_ack(message.delivery_tag)

        return {"put": put, "get_ack": _rate(count, get_ack)}
    finally:
        channel.queue_delete(name)
        conn.close()


def redis_rows(url: str, count: int) -> dict[str, Any]:
    """Redis' reliable queue: LPUSH; LMOVE to a processing list, LREM as the ack."""
    import redis

    client = redis.Redis.from_url(url)
    name = f"bench_{secrets.token_hex(4)}"
    processing = f"{name}:processing"
    try:
        put = _rate(count, lambda: client.lpush(name, PAYLOAD))

        def get_ack() -> None:
            message = client.lmove(name, processing, "RIGHT", "LEFT")
            assert message is not None
            client.lrem(processing, 1, message)  # type: ignore[arg-type]  # bytes, as stored

        return {"put": put, "get_ack": _rate(count, get_ack)}
    finally:
        client.delete(name, processing)
        client.close()


def rows(url: str, count: int) -> dict[str, Any]:
    """The raw rows of one broker: squeal on a database URL, RabbitMQ, or Redis."""
    scheme = url.partition("://")[0]
    if scheme in ("amqp", "pyamqp"):
        return rabbitmq_rows(url, count)
    if scheme in ("redis", "rediss"):
        return redis_rows(url, count)
    return squeal_rows(sa.make_url(url.removeprefix("squeal+")), count)

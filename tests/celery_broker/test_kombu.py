"""squeal's kombu transport pinned directly: publish, consume, ack, reject, purge, length,
priorities, prefetch, and a consumer that dies holding a delivery."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator

import kombu
import pytest
import sqlalchemy as sa
from celery import Celery

import squeal.kombu
from squeal import Queue


@pytest.fixture
def broker(db_url: str) -> Iterator[tuple[str, Queue]]:
    """A ``squeal+`` URL and transport options on fresh tables, and a Queue on them."""
    prefix = "k" + uuid.uuid4().hex[:8]
    queue = Queue(sa.create_engine(db_url), prefix=prefix)
    queue.create()
    yield f"squeal+{db_url}", queue
    queue.destroy()
    queue.close()
    queue.engine.dispose()


def _connect(broker: tuple[str, Queue], **options: object) -> kombu.Connection:
    url, queue = broker
    return kombu.Connection(
        url, transport_options={"prefix": queue.prefix, "create_tables": False, **options}
    )


def test_publish_consume_ack_reject_purge_and_length(broker: tuple[str, Queue]) -> None:
    _, queue = broker
    with _connect(broker) as conn:
        jobs = conn.SimpleQueue("jobs")
        jobs.consumer.qos(prefetch_count=1)  # one delivery at a time
        for n in range(4):
            jobs.put({"n": n})
        assert jobs.qsize() == 4
        first = jobs.get(timeout=5)
        assert first.payload == {"n": 0}
        first.ack()
        second = jobs.get(timeout=5)
        second.requeue()  # nacked without delay: ready again at once, the attempt counted
        again = jobs.get(timeout=5)
        assert again.payload == {"n": 1}
        assert again.delivery_tag != second.delivery_tag  # another delivery
        assert again.delivery_info["redelivered"] is True
        again.reject()  # without requeue: gone, as AMQP drops it
        assert jobs.qsize() == 2
        assert jobs.clear() == 2
        assert jobs.qsize() == 0
        with pytest.raises(jobs.Empty):
            jobs.get(timeout=0.2)
        jobs.close()
    assert queue.stats() == {}


def test_higher_priority_first_then_oldest(broker: tuple[str, Queue]) -> None:
    with _connect(broker) as conn:
        jobs = conn.SimpleQueue("jobs")
        jobs.put({"n": "low"}, priority=0)
        jobs.put({"n": "high"}, priority=9)
        jobs.put({"n": "mid"}, priority=5)
        got = []
        for _ in range(3):
            message = jobs.get(timeout=5)
            got.append(message.payload["n"])
            message.ack()
        assert got == ["high", "mid", "low"]
        jobs.close()


def test_a_consumer_leases_no_more_than_its_prefetch(broker: tuple[str, Queue]) -> None:
    _, queue = broker
    with _connect(broker) as conn:
        producer = conn.Producer()
        for n in range(10):
            producer.publish({"n": n}, routing_key="jobs", declare=[kombu.Queue("jobs")])
        seen: list[kombu.Message] = []
        with conn.Consumer(kombu.Queue("jobs"), callbacks=[lambda _, m: seen.append(m)]) as c:
            c.qos(prefetch_count=3)
            deadline = time.monotonic() + 10
            while len(seen) < 3 and time.monotonic() < deadline:
                conn.drain_events(timeout=1)
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.3)  # three unacked: no more is leased
            assert queue.stats()["jobs"].leased == 3
            for message in seen:
                message.ack()
    assert queue.stats()["jobs"].ready == 7


def test_a_delivery_never_acked_comes_back_when_its_lease_runs_out(
    broker: tuple[str, Queue],
) -> None:
    """A consumer that dies holding a delivery (its channel never closed, its keeper gone):
    the message is delivered again once the lease runs out, to another connection."""
    dead = _connect(broker, visibility_timeout=3.0)
    jobs = dead.SimpleQueue("jobs")
    jobs.put({"n": 1})
    held = jobs.get(timeout=5)
    assert held.payload == {"n": 1}
    dead.transport._stop_keeper.set()  # as if the process died: nothing renews the lease
    with _connect(broker) as conn:
        other = conn.SimpleQueue("jobs")
        with pytest.raises(other.Empty):
            other.get(timeout=0.3)  # leased
        again = other.get(timeout=15)  # once the lease ran out
        assert again.payload == {"n": 1}
        assert again.delivery_info["redelivered"] is True
        again.ack()
        other.close()
    dead.close()  # its release finds the lease gone: logged, nothing raised


def test_held_deliveries_outlive_the_visibility_timeout(broker: tuple[str, Queue]) -> None:
    """The keeper renews the leases of unacked deliveries: a long task keeps its message."""
    with _connect(broker, visibility_timeout=2.0) as conn:  # renewed every 0.67 s
        jobs = conn.SimpleQueue("jobs")
        jobs.put({"n": 1})
        held = jobs.get(timeout=5)
        time.sleep(4.5)  # more than twice the lease
        _, queue = broker
        assert queue.get_many("jobs", 10) == []  # still leased to the holder
        held.ack()
        jobs.close()


def test_the_squeal_alias_and_an_explicit_transport(broker: tuple[str, Queue]) -> None:
    """``squeal+URL``; or the transport given itself, with a URL kombu does not split (no
    ``+`` in its scheme: the database's default driver) or the URL as a transport option."""
    url, queue = broker
    assert kombu.Connection(url).transport_cls == "squeal"
    database = sa.make_url(url.removeprefix("squeal+"))
    plain = database.set(drivername=database.get_backend_name())
    for broker_url, options in [
        (plain.render_as_string(hide_password=False), {}),
        ("squeal://", {"url": database.render_as_string(hide_password=False)}),
    ]:
        with kombu.Connection(
            broker_url,
            transport=squeal.kombu.Transport,
            transport_options={"prefix": queue.prefix, "create_tables": False, **options},
        ) as conn:
            jobs = conn.SimpleQueue("jobs")
            jobs.put({"url": broker_url})
            message = jobs.get(timeout=5)
            assert message.payload == {"url": broker_url}
            message.ack()
            jobs.close()


def test_a_task_sent_in_the_callers_transaction_exists_only_if_it_commits(
    broker: tuple[str, Queue],
) -> None:
    _, queue = broker
    orders = sa.Table(f"{queue.prefix}_orders", sa.MetaData(), sa.Column("id", sa.Integer))
    engine = queue.engine
    orders.create(engine)
    app = Celery("sender", broker=broker[0])
    app.conf.broker_transport_options = {"prefix": queue.prefix, "create_tables": False}
    try:

        def failed_order() -> None:
            with engine.begin() as conn, squeal.kombu.in_transaction(conn):
                conn.execute(orders.insert().values(id=1))
                app.send_task("receipt", args=[1])
                raise RuntimeError("the order failed")

        with pytest.raises(RuntimeError):
            failed_order()
        assert queue.stats() == {}  # rolled back with the order
        with engine.begin() as conn, squeal.kombu.in_transaction(conn):
            conn.execute(orders.insert().values(id=2))
            app.send_task("receipt", args=[2])
        app.send_task("outside", args=[3])  # outside the block: its own transaction
        sent = queue.get_many("celery", 10)
        assert [json.loads(m.payload)["headers"]["task"] for m in sent] == ["receipt", "outside"]
        queue.ack_many(sent)
    finally:
        app.close()
        orders.drop(engine)


def test_a_message_that_is_not_kombus_is_nacked_not_delivered(broker: tuple[str, Queue]) -> None:
    """Something else put raw bytes on the topic: the consumer skips it (nacked with the
    reason, so it dies after its attempts) and delivers the next one."""
    _, queue = broker
    foreign = queue.put(b"not json", "jobs")
    with _connect(broker) as conn:
        jobs = conn.SimpleQueue("jobs")
        jobs.put({"n": 1})
        message = jobs.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        jobs.close()
    stats = queue.stats()["jobs"]
    assert (stats.ready, stats.delayed, stats.leased) == (0, 1, 0)  # backing off
    assert foreign is not None


def test_a_consumer_without_acks_holds_nothing(broker: tuple[str, Queue]) -> None:
    """``no_ack`` (Celery's rpc:// results consume so): each delivery is acked as it is
    handed out, never held or renewed."""
    _, queue = broker
    with _connect(broker) as conn:
        producer = conn.Producer()
        for n in range(3):
            producer.publish({"n": n}, routing_key="replies", declare=[kombu.Queue("replies")])
        seen: list[kombu.Message] = []
        consumer = conn.Consumer(
            kombu.Queue("replies"), callbacks=[lambda _, m: seen.append(m)], no_ack=True
        )
        with consumer:
            deadline = time.monotonic() + 10
            while len(seen) < 3 and time.monotonic() < deadline:
                conn.drain_events(timeout=1)
        assert sorted(m.payload["n"] for m in seen) == [0, 1, 2]
        conn.transport.await_acks()
        assert queue.stats() == {}


def _drain(conn: kombu.Connection, queues: list[kombu.Queue], most: float = 5.0) -> list[object]:
    """Consume ``queues`` on ``conn`` until nothing more came for a while; the payloads."""
    got: list[object] = []

    def received(body: object, message: kombu.Message) -> None:
        got.append(body)
        message.ack()

    with conn.Consumer(queues, callbacks=[received]):
        deadline = time.monotonic() + most
        while time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                if got:
                    break
    return got


def test_a_fanout_exchange_copies_to_the_queues_every_process_bound(
    broker: tuple[str, Queue],
) -> None:
    """Bindings live in the database: the publisher never bound or declared the queues."""
    _, queue = broker
    news = kombu.Exchange("news", type="fanout")
    with _connect(broker) as one, _connect(broker) as two, _connect(broker) as publisher:
        a, b = kombu.Queue("a", news)(one), kombu.Queue("b", news)(two)
        a.declare()
        b.declare()
        assert {x.topic for x in queue.bindings("news")} == {"a", "b"}
        with publisher.Producer() as producer:
            producer.publish({"n": 1}, exchange=news, declare=[news])
        assert _drain(one, [a]) == [{"n": 1}]
        assert _drain(two, [b]) == [{"n": 1}]
    assert queue.stats() == {}


def test_a_direct_exchange_routes_to_a_queue_bound_in_another_process(
    broker: tuple[str, Queue],
) -> None:
    """How a Celery worker replies to ``celery inspect``: to a queue only the client bound."""
    replies = kombu.Exchange("replies", type="direct")
    with _connect(broker) as client, _connect(broker) as worker:
        mine = kombu.Queue("client-1.replies", replies, routing_key="client-1")(client)
        mine.declare()
        with worker.Producer() as producer:
            producer.publish(
                {"pong": 1}, exchange=replies, routing_key="client-1", declare=[replies]
            )
            producer.publish({"lost": 1}, exchange=replies, routing_key="client-2")
        assert _drain(client, [mine]) == [{"pong": 1}]


def test_an_expiring_queue_keeps_its_binding_while_its_process_lives(
    broker: tuple[str, Queue],
) -> None:
    """x-expires: renewed by the keeper thread while the connection is open, gone once it is
    not; an auto_delete queue is unbound and purged when the channel consuming it closes."""
    _, queue = broker
    control = kombu.Exchange("control", type="fanout")
    with _connect(broker) as living:
        box = kombu.Queue("box", control, expires=3.0, message_ttl=30)(living.default_channel)
        box.declare()
        (first,) = queue.bindings("control")
        assert (first.topic, first.ttl) == ("box", 30.0)
        assert first.expires_at is not None
        deadline = time.monotonic() + 30
        while queue.bindings("control")[0].expires_at == first.expires_at:  # renewed
            assert time.monotonic() < deadline, "the binding was never renewed"
            time.sleep(0.05)
        channel = living.channel()
        gone = kombu.Queue("gone", control, auto_delete=True)(channel)
        gone.declare()
        queue.publish(b"x", "control")
        assert queue.size("gone") == 1
        with kombu.Consumer(channel, [gone], callbacks=[]):
            assert {b.topic for b in queue.bindings("control")} == {"box", "gone"}
            channel.close()
        assert [b.topic for b in queue.bindings("control")] == ["box"]
        assert queue.size("gone") == 0
    deadline = time.monotonic() + 30  # its process (the connection) is gone: it runs out
    while queue.bindings("control"):
        assert time.monotonic() < deadline, queue.bindings("control")
        time.sleep(0.1)
    assert queue.publish(b"x", "control") == {}


def test_an_unbound_queue_receives_no_more(broker: tuple[str, Queue]) -> None:
    _, queue = broker
    direct = kombu.Exchange("direct-x", type="direct")
    with _connect(broker) as conn:
        jobs = kombu.Queue("jobs-x", direct, routing_key="k")(conn.default_channel)
        jobs.declare()
        assert [b.topic for b in queue.bindings("direct-x")] == ["jobs-x"]
        jobs.unbind_from(direct, routing_key="k")
        assert queue.bindings("direct-x") == []
        with conn.Producer() as producer:  # neither here nor anywhere
            producer.publish({"n": 1}, exchange=direct, routing_key="k")
        assert queue.stats() == {}


def test_lingering_publishes_are_stored_together_before_an_ack_and_at_close(
    broker: tuple[str, Queue],
) -> None:
    _, queue = broker
    with _connect(broker, publish_linger=3600.0) as conn:  # stored only when made to
        jobs = conn.SimpleQueue("jobs")
        jobs.consumer.qos(prefetch_count=1)
        for n in range(3):
            jobs.put({"n": n})
        assert queue.size("jobs") == 0  # returned before it was stored
        assert conn.transport.linger.flush(timeout=60)
        assert jobs.qsize() == 3
        first = jobs.get(timeout=5)
        jobs.put({"n": 3})  # what a task sends ...
        assert queue.size("jobs") == 2
        first.ack()  # ... is stored before its ack
        assert queue.size("jobs") == 3
        with queue.engine.connect() as caller:  # in the caller's transaction: not lingering
            with caller.begin(), squeal.kombu.in_transaction(caller):
                jobs.put({"n": "committed"})
            assert queue.size("jobs") == 4
            with caller.begin() as rolled_back, squeal.kombu.in_transaction(caller):
                jobs.put({"n": "rolled back"})
                rolled_back.rollback()
        jobs.put({"n": 4})
        jobs.close()
    # the connection's close stored the last one
    payloads = [json.loads(m.payload) for m in queue.get_many("jobs", 10)]
    assert [json.loads(base64.b64decode(p["body"])) for p in payloads] == [
        {"n": 1},
        {"n": 2},
        {"n": 3},
        {"n": "committed"},
        {"n": 4},
    ]


def test_an_ack_stores_first_what_any_connection_of_the_process_sent_lingering(
    broker: tuple[str, Queue],
) -> None:
    """A Celery task sends through the producer pool's connections, not the one its worker
    acks on: the ack stores what every connection of the process holds first."""
    _, queue = broker
    with _connect(broker) as consumer, _connect(broker, publish_linger=3600.0) as producer:
        jobs = consumer.SimpleQueue("jobs")
        jobs.consumer.qos(prefetch_count=1)
        jobs.put({"n": 0})
        delivery = jobs.get(timeout=5)
        follow_up = producer.SimpleQueue("follow_up")
        follow_up.put({"n": 1})  # what the task sends
        assert queue.size("follow_up") == 0
        delivery.ack()
        assert queue.size("follow_up") == 1
        follow_up.close()
        jobs.close()


def test_a_send_in_the_callers_transaction_never_waits_for_lingering_sends(
    broker: tuple[str, Queue],
) -> None:
    """The caller's transaction may hold a lock the lingering sends' store needs (SQLite's
    write lock, once the caller wrote): a send in it must not wait for them."""
    _, queue = broker
    orders = sa.Table(f"{queue.prefix}_orders", sa.MetaData(), sa.Column("id", sa.Integer))
    orders.create(queue.engine)
    try:
        with _connect(broker, publish_linger=3600.0) as conn:
            jobs = conn.SimpleQueue("jobs")
            jobs.put({"n": "lingering"})
            started = time.monotonic()
            with queue.engine.begin() as caller, squeal.kombu.in_transaction(caller):
                caller.execute(orders.insert().values(id=1))  # the caller's write comes first
                jobs.put({"n": "in the transaction"})
            assert time.monotonic() - started < 20  # no wait for a lock it holds itself
            assert conn.transport.linger.flush(timeout=60)
            assert queue.size("jobs") == 2
            jobs.close()
    finally:
        orders.drop(queue.engine)

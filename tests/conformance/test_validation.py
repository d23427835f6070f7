"""Bad input raises a typed error before any SQL runs, and nothing is written."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

import squeal
from squeal import Message, Queue, executor

NAN, INF = float("nan"), float("inf")

#: What each kind of bad input must raise: squeal's class, and the builtin it also is.
TYPE = (squeal.InvalidType, TypeError)
VALUE = (squeal.ValidationError, ValueError)
SIZE = (squeal.PayloadTooLarge, ValueError)

Case = tuple[str, Callable[[], object], tuple[type[Exception], ...]]

BAD_TOPICS: list[tuple[object, tuple[type[Exception], ...]]] = [
    ("", VALUE),
    ("x" * 256, VALUE),
    ("\U0001f4e8" * 256, VALUE),
    ("a\x00b", VALUE),
    ("\x00", VALUE),
    ("lone \ud800 surrogate", VALUE),
    (None, TYPE),
    (b"bytes", TYPE),
    (7, TYPE),
]
BAD_SECONDS: list[tuple[object, tuple[type[Exception], ...]]] = [
    (NAN, VALUE),
    (INF, VALUE),
    (-INF, VALUE),
    (-0.001, VALUE),
    (-1, VALUE),
    ("1", TYPE),
    (True, TYPE),
]
#: A visibility timeout must also be positive.
BAD_TIMEOUTS = [*BAD_SECONDS, (0, VALUE), (0.0, VALUE)]
BAD_PRIORITIES: list[tuple[object, tuple[type[Exception], ...]]] = [
    (2**31, VALUE),
    (-(2**31) - 1, VALUE),
    (2**63, VALUE),
    (True, TYPE),
    (False, TYPE),
    (1.0, TYPE),
    ("1", TYPE),
    (None, TYPE),
]
BAD_LIMITS: list[tuple[object, tuple[type[Exception], ...]]] = [
    (0, VALUE),
    (-1, VALUE),
    (True, TYPE),
    (1.5, TYPE),
    ("3", TYPE),
]


@contextmanager
def _no_sql(engine: sa.Engine) -> Iterator[None]:
    """Fail if anything reaches the database inside the block.

    squeal runs its hot path on DB-API connections of its own, which engine cursor events do
    not see; its statement listener does. Opening a connection from the engine counts too.
    """
    seen: list[str] = []

    def on_cursor(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    def on_checkout(*args: Any) -> None:
        seen.append("<connection checked out of the engine's pool>")

    def on_statement(statement: str, parameters: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", on_cursor)
    sa.event.listen(engine.pool, "checkout", on_checkout)
    executor.add_statement_listener(on_statement)
    try:
        yield
    finally:
        executor.remove_statement_listener(on_statement)
        sa.event.remove(engine.pool, "checkout", on_checkout)
        sa.event.remove(engine, "before_cursor_execute", on_cursor)
    assert seen == [], f"the database was used before the input was rejected: {seen}"


def _rejects(cases: list[Case]) -> None:
    """Every case raises every one of its expected exception types (all reported at once)."""
    wrong: list[str] = []
    for name, call, expected in cases:
        try:
            call()
        except Exception as exc:
            missing = [e.__name__ for e in expected if not isinstance(exc, e)]
            if missing:
                wrong.append(f"{name}: raised {exc!r}, which is not {missing}")
        else:
            wrong.append(f"{name}: raised nothing")
    assert not wrong, "\n".join(wrong)


def _claim(q: Queue, topic: str = "default") -> Message:
    msg = q.get(topic)
    assert msg is not None
    return msg


def _counts(q: Queue, topic: str) -> tuple[int, int, int, int] | None:
    s = q.stats().get(topic)
    return None if s is None else (s.ready, s.delayed, s.leased, s.dead)


# -- payloads ---------------------------------------------------------------------------------


def test_bad_payloads_are_rejected_before_sql_and_nothing_is_written(
    make_queue: Callable[..., Queue], engine: sa.Engine
) -> None:
    q = make_queue(max_payload_size=10)
    cases: list[Case] = [
        ("str", lambda: q.put("text", "t"), TYPE),  # type: ignore[arg-type]
        ("int", lambda: q.put(1, "t"), TYPE),  # type: ignore[arg-type]
        ("None", lambda: q.put(None, "t"), TYPE),  # type: ignore[arg-type]
        ("list of ints", lambda: q.put([1, 2], "t"), TYPE),  # type: ignore[arg-type]
        ("one byte over", lambda: q.put(b"x" * 11, "t"), SIZE),
        ("bytearray over", lambda: q.put(bytearray(11), "t"), SIZE),
        ("memoryview over", lambda: q.put(memoryview(b"x" * 11), "t"), SIZE),
        ("huge", lambda: q.put(b"x" * 2_000_000, "t"), SIZE),
        ("put_many str", lambda: q.put_many(["a"], "t"), TYPE),  # type: ignore[list-item]
        ("put_many over", lambda: q.put_many([b"x" * 11], "t"), SIZE),
    ]
    with _no_sql(engine):
        _rejects(cases)
    assert q.stats() == {}


def test_payload_over_the_default_limit_is_rejected(queue: Queue, engine: sa.Engine) -> None:
    with _no_sql(engine):
        _rejects([("1 MiB + 1", lambda: queue.put(b"x" * (1_048_576 + 1), "t"), SIZE)])
    assert queue.stats() == {}


def test_one_bad_payload_in_the_middle_of_put_many_writes_nothing(
    make_queue: Callable[..., Queue], engine: sa.Engine
) -> None:
    q = make_queue(max_payload_size=10)
    ok = [b"a"] * 5
    cases: list[Case] = [
        ("str", lambda: q.put_many([*ok, "bad", *ok], "t"), TYPE),  # type: ignore[list-item]
        ("None", lambda: q.put_many([*ok, None, *ok], "t"), TYPE),  # type: ignore[list-item]
        ("too large", lambda: q.put_many([*ok, b"x" * 11, *ok], "t"), SIZE),
        ("last of 2000", lambda: q.put_many([b"a"] * 1999 + [b"x" * 11], "t"), SIZE),
        (
            "bad dedup key",
            lambda: q.put_many([b"a", b"b", b"c"], "t", dedup_keys=["k1", "", "k3"]),
            VALUE,
        ),
    ]
    with _no_sql(engine):
        _rejects(cases)
    assert q.stats() == {}


def test_put_many_of_an_empty_list_returns_empty_without_sql(
    queue: Queue, engine: sa.Engine
) -> None:
    with _no_sql(engine):
        assert queue.put_many([], "t") == []


def test_put_many_rejects_a_non_list_payloads_argument(queue: Queue, engine: sa.Engine) -> None:
    cases: list[Case] = [
        ("bytes", lambda: queue.put_many(b"abc", "t"), TYPE),
        ("str", lambda: queue.put_many("abc", "t"), TYPE),  # type: ignore[arg-type]
        ("None", lambda: queue.put_many(None, "t"), TYPE),  # type: ignore[arg-type]
        ("int", lambda: queue.put_many(3, "t"), TYPE),  # type: ignore[arg-type]
    ]
    with _no_sql(engine):
        _rejects(cases)
    assert queue.stats() == {}


def test_put_many_rejects_dedup_keys_of_another_length(queue: Queue, engine: sa.Engine) -> None:
    cases: list[Case] = [
        ("fewer", lambda: queue.put_many([b"a", b"b"], "t", dedup_keys=["k"]), VALUE),
        ("more", lambda: queue.put_many([b"a"], "t", dedup_keys=["k", "l"]), VALUE),
        ("keys for none", lambda: queue.put_many([], "t", dedup_keys=["k"]), VALUE),
        ("not a list", lambda: queue.put_many([b"a"], "t", dedup_keys="k"), TYPE),
    ]
    with _no_sql(engine):
        _rejects(cases)
    assert queue.stats() == {}


# -- topics and dedup keys --------------------------------------------------------------------


def test_bad_topics_are_rejected_by_every_operation_before_sql(
    queue: Queue, engine: sa.Engine
) -> None:
    operations: dict[str, Callable[[Any], object]] = {
        "put": lambda t: queue.put(b"x", t),
        "put_many": lambda t: queue.put_many([b"x"], t),
        "get": queue.get,
        "get(wait)": lambda t: queue.get(t, wait=1.0),
        "get_many": lambda t: queue.get_many(t, 5),
        "size": queue.size,
        "dead": queue.dead,
        "redrive": queue.redrive,
        "purge": queue.purge,
        "purge(dead_only)": lambda t: queue.purge(t, dead_only=True),
    }
    cases: list[Case] = [
        (f"{name}({topic!r})", lambda op=op, topic=topic: op(topic), expected)
        for name, op in operations.items()
        for topic, expected in BAD_TOPICS
    ]
    with _no_sql(engine):
        _rejects(cases)
    assert queue.stats() == {}


def test_bad_dedup_keys_are_rejected_before_sql(queue: Queue, engine: sa.Engine) -> None:
    cases: list[Case] = []
    for key, expected in BAD_TOPICS:
        if key is None:  # None means "no key"
            continue
        cases.append((f"put({key!r})", lambda k=key: queue.put(b"x", "t", dedup_key=k), expected))
        cases.append(
            (
                f"put_many({key!r})",
                lambda k=key: queue.put_many([b"x", b"y"], "t", dedup_keys=["ok", k]),
                expected,
            )
        )
    with _no_sql(engine):
        _rejects(cases)
    assert queue.stats() == {}


def test_sql_shaped_topics_and_keys_are_stored_as_plain_text(queue: Queue) -> None:
    topic = "t'; DROP TABLE x; --"
    key = 'k"); DELETE FROM x; --'
    queue.put(b"x", topic, dedup_key=key)
    assert queue.put(b"y", topic, dedup_key=key) is None
    assert queue.topics() == {topic: 1}
    assert _claim(queue, topic).topic == topic


# -- numbers ----------------------------------------------------------------------------------


def test_bad_priorities_are_rejected_before_sql(queue: Queue, engine: sa.Engine) -> None:
    cases: list[Case] = []
    for priority, expected in BAD_PRIORITIES:
        cases.append(
            (f"put({priority!r})", lambda p=priority: queue.put(b"x", priority=p), expected)
        )
        cases.append(
            (
                f"put_many({priority!r})",
                lambda p=priority: queue.put_many([b"x"], priority=p),
                expected,
            )
        )
    with _no_sql(engine):
        _rejects(cases)
    assert queue.stats() == {}


def test_bad_delays_are_rejected_before_sql(queue: Queue, engine: sa.Engine) -> None:
    cases: list[Case] = []
    for delay, expected in BAD_SECONDS:
        cases.append((f"put({delay!r})", lambda d=delay: queue.put(b"x", delay=d), expected))
        cases.append(
            (f"put_many({delay!r})", lambda d=delay: queue.put_many([b"x"], delay=d), expected)
        )
    with _no_sql(engine):
        _rejects(cases)
    assert queue.stats() == {}


def test_bad_visibility_timeouts_and_waits_are_rejected_by_get_before_sql(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.put(b"x", "t")
    cases: list[Case] = []
    for vt, expected in BAD_TIMEOUTS:
        cases.append(
            (f"get(vt={vt!r})", lambda v=vt: queue.get("t", visibility_timeout=v), expected)
        )
        cases.append(
            (
                f"get_many(vt={vt!r})",
                lambda v=vt: queue.get_many("t", 5, visibility_timeout=v),
                expected,
            )
        )
    for wait, expected in BAD_SECONDS:
        cases.append((f"get(wait={wait!r})", lambda w=wait: queue.get("t", wait=w), expected))
        cases.append(
            (f"get_many(wait={wait!r})", lambda w=wait: queue.get_many("t", 5, wait=w), expected)
        )
    with _no_sql(engine):
        _rejects(cases)
    assert _counts(queue, "t") == (1, 0, 0, 0)
    assert _claim(queue, "t").attempts == 1


def test_bad_limits_are_rejected_before_sql(queue: Queue, engine: sa.Engine) -> None:
    queue.put(b"x", "t")
    cases: list[Case] = []
    for limit, expected in BAD_LIMITS:
        cases.append((f"get_many({limit!r})", lambda n=limit: queue.get_many("t", n), expected))
        cases.append((f"dead({limit!r})", lambda n=limit: queue.dead("t", n), expected))
        cases.append((f"redrive({limit!r})", lambda n=limit: queue.redrive("t", n), expected))
    with _no_sql(engine):
        _rejects(cases)
    assert _counts(queue, "t") == (1, 0, 0, 0)


def test_bad_arguments_to_a_leased_message_are_rejected_and_keep_it_leased(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.put_many([b"a", b"b"], "t")
    msgs = queue.get_many("t", 5, visibility_timeout=30)
    msg = msgs[0]
    cases: list[Case] = []
    for delay, expected in BAD_SECONDS:
        cases.append((f"nack(delay={delay!r})", lambda d=delay: msg.nack(delay=d), expected))
        cases.append(
            (
                f"nack_many(delay={delay!r})",
                lambda d=delay: queue.nack_many(msgs, delay=d),
                expected,
            )
        )
    for vt, expected in BAD_TIMEOUTS:
        cases.append((f"touch({vt!r})", lambda v=vt: msg.touch(visibility_timeout=v), expected))
        cases.append(
            (
                f"touch_many({vt!r})",
                lambda v=vt: queue.touch_many(msgs, visibility_timeout=v),
                expected,
            )
        )
    with _no_sql(engine):
        _rejects(cases)
    assert [m.settled for m in msgs] == [False, False]
    assert _counts(queue, "t") == (0, 0, 2, 0)
    queue.ack_many(msgs)
    assert queue.stats() == {}


def test_batch_operations_reject_things_that_are_not_messages(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.put(b"x", "t")
    msg = _claim(queue, "t")
    cases: list[Case] = [
        ("ack_many", lambda: queue.ack_many([msg, "x"]), TYPE),  # type: ignore[list-item]
        ("nack_many", lambda: queue.nack_many([msg.id]), TYPE),  # type: ignore[list-item]
        ("touch_many", lambda: queue.touch_many([None]), TYPE),  # type: ignore[list-item]
    ]
    with _no_sql(engine):
        _rejects(cases)
    assert msg.settled is False
    msg.ack()


def test_connection_argument_must_be_a_sqlalchemy_connection(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.put(b"x", "t")
    msg = _claim(queue, "t")
    cases: list[Case] = [
        ("put(engine)", lambda: queue.put(b"x", "u", connection=engine), TYPE),  # type: ignore[arg-type]
        ("put_many(str)", lambda: queue.put_many([b"x"], "u", connection="c"), TYPE),  # type: ignore[arg-type]
        ("ack(engine)", lambda: msg.ack(connection=engine), TYPE),  # type: ignore[arg-type]
        ("ack_many(1)", lambda: queue.ack_many([msg], connection=1), TYPE),  # type: ignore[arg-type]
    ]
    with _no_sql(engine):
        _rejects(cases)
    assert "u" not in queue.stats()
    assert msg.settled is False
    msg.ack()


# -- Queue construction -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_prefix",
    ["x; drop table", "Upper", "", "a" * 60, 123, None, "1starts_with_digit", "has-dash", "ü"],
)
def test_unsafe_prefix_is_rejected_at_construction(engine: sa.Engine, bad_prefix: object) -> None:
    with _no_sql(engine), pytest.raises(ValueError, match="prefix"):
        Queue(engine, prefix=bad_prefix)  # type: ignore[arg-type]


def test_longest_safe_prefix_is_accepted(engine: sa.Engine) -> None:
    with _no_sql(engine):
        Queue(engine, prefix="a" * 43)


def test_bad_options_are_rejected_at_construction(engine: sa.Engine) -> None:
    cases: list[Case] = [
        ("visibility_timeout=-1", lambda: Queue(engine, visibility_timeout=-1), VALUE),
        ("visibility_timeout=0", lambda: Queue(engine, visibility_timeout=0), VALUE),
        ("visibility_timeout=nan", lambda: Queue(engine, visibility_timeout=NAN), VALUE),
        ("visibility_timeout=inf", lambda: Queue(engine, visibility_timeout=INF), VALUE),
        ("new_message_delay=-1", lambda: Queue(engine, new_message_delay=-1), VALUE),
        ("failure_base_delay=nan", lambda: Queue(engine, failure_base_delay=NAN), VALUE),
        ("max_failure_delay=-1", lambda: Queue(engine, max_failure_delay=-1), VALUE),
        ("max_attempts=0", lambda: Queue(engine, max_attempts=0), VALUE),
        ("max_attempts=-3", lambda: Queue(engine, max_attempts=-3), VALUE),
        ("max_attempts=True", lambda: Queue(engine, max_attempts=True), TYPE),
        ("max_attempts=2.0", lambda: Queue(engine, max_attempts=2.0), TYPE),  # type: ignore[arg-type]
        ("max_payload_size=0", lambda: Queue(engine, max_payload_size=0), VALUE),
        ("max_payload_size=1 GiB", lambda: Queue(engine, max_payload_size=2**30), VALUE),
        ("engine=str", lambda: Queue("sqlite://"), TYPE),  # type: ignore[arg-type]
        ("engine=None", lambda: Queue(None), TYPE),  # type: ignore[arg-type]
    ]
    with _no_sql(engine):
        _rejects(cases)

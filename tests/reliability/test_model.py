"""T9: a Hypothesis state machine drives a real Queue and an in-memory model side by side.

After every step the per-topic ready/delayed/leased/dead counts of ``Queue.stats()`` must equal the
model's, and every ``get`` must return the message the model says is next (highest priority, then
lowest id). Each example uses topics of its own, so examples on one queue never see each other.
The queue has unlimited attempts: nothing ever dies, so ``dead`` must stay 0.

Claims sweep due messages at least every ``squeal.claim_scope.SWEEP_SECONDS``; here that is
patched below the expiry rule's sleep less its lease, so when the rule has slept, the lapsed
lease is both due and swept by the next claim and the model's exact order holds. Every other
step runs claims from the queue object's floor (squeal.claim_scope).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from squeal import LeaseLost, Message, Queue, claim_scope
from squeal.message import TopicStats

#: Lease of ordinary claims: far longer than any example runs, so no lease expires by accident.
LONG_VT = 30.0
#: Lease of the expiry rule, and how long it sleeps to let it run out.
SHORT_VT = 0.3
EXPIRY_SLEEP = 0.6

SETTINGS = settings(
    max_examples=15,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=False,
)

_examples = itertools.count()


@dataclass
class Model:
    """One stored message as the model sees it."""

    id: int
    topic: str
    priority: int
    key: str | None
    state: str  # "ready", "leased" or "delayed"


def _machine(q: Queue) -> type[RuleBasedStateMachine]:
    class QueueMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            n = next(_examples)
            self.topics = [f"m{n}a", f"m{n}b"]
            self.stored: dict[int, Model] = {}
            self.held: list[Message] = []  # handles whose lease is current
            self.expired: list[Message] = []  # handles whose lease ran out, not re-claimed yet
            self.stale: list[Message] = []  # handles whose message was re-claimed since

        # -- helpers --------------------------------------------------------------------------

        def _live_key(self, topic: str, key: str | None) -> bool:
            return key is not None and any(
                m.topic == topic and m.key == key for m in self.stored.values()
            )

        def _next(self, topic: str) -> Model | None:
            ready = [m for m in self.stored.values() if m.topic == topic and m.state == "ready"]
            return min(ready, key=lambda m: (-m.priority, m.id), default=None)

        def _counts(self, stats: dict[str, TopicStats]) -> list[tuple[int, int, int, int]]:
            return [
                (s.ready, s.delayed, s.leased, s.dead) if s else (0, 0, 0, 0)
                for s in (stats.get(t) for t in self.topics)
            ]

        def _claimed(self, msg: Message) -> None:
            for handle in [h for h in self.expired if h.id == msg.id]:
                self.expired.remove(handle)
                self.stale.append(handle)

        # -- rules ----------------------------------------------------------------------------

        @rule(
            t=st.integers(0, 1),
            priority=st.integers(-3, 3),
            key=st.none() | st.sampled_from(["k1", "k2", "k3"]),
        )
        def put(self, t: int, priority: int, key: str | None) -> None:
            topic = self.topics[t]
            dup = self._live_key(topic, key)
            got = q.put(b"p", topic, priority=priority, dedup_key=key)
            if dup:
                assert got is None, f"put with live key {key!r} enqueued {got}"
                return
            assert got is not None
            assert got not in self.stored
            assert all(got > i for i in self.stored)
            self.stored[got] = Model(got, topic, priority, key, "ready")

        @rule(
            t=st.integers(0, 1),
            priority=st.integers(-3, 3),
            keys=st.lists(st.none() | st.sampled_from(["k1", "k2", "k3", "k4"]), max_size=6),
        )
        def put_many(self, t: int, priority: int, keys: list[str | None]) -> None:
            topic = self.topics[t]
            payloads = [f"b{i}".encode() for i in range(len(keys))]
            got = q.put_many(payloads, topic, priority=priority, dedup_keys=keys)
            assert len(got) == len(keys)
            seen: set[str] = set()
            new_ids: list[int] = []
            for key, new in zip(keys, got, strict=True):
                if self._live_key(topic, key) or (key is not None and key in seen):
                    assert new is None, f"key {key!r} was live but put_many enqueued {new}"
                    continue
                if key is not None:
                    seen.add(key)
                assert new is not None
                assert new not in self.stored
                new_ids.append(new)
                self.stored[new] = Model(new, topic, priority, key, "ready")
            assert new_ids == sorted(new_ids), f"ids not in payload order: {new_ids}"

        @rule(t=st.integers(0, 1))
        def get(self, t: int) -> None:
            topic = self.topics[t]
            expected = self._next(topic)
            msg = q.get(topic, visibility_timeout=LONG_VT)
            if expected is None:
                assert msg is None, f"got {msg} from a topic the model says has nothing ready"
                return
            assert msg is not None, f"expected message {expected.id}, got nothing"
            assert (msg.id, msg.priority, msg.topic) == (
                expected.id,
                expected.priority,
                expected.topic,
            )
            expected.state = "leased"
            self._claimed(msg)
            self.held.append(msg)

        @precondition(lambda self: self.held)
        @rule(i=st.integers(0, 100))
        def ack(self, i: int) -> None:
            msg = self.held.pop(i % len(self.held))
            msg.ack()
            del self.stored[msg.id]

        @precondition(lambda self: self.held)
        @rule(i=st.integers(0, 100), later=st.booleans())
        def nack(self, i: int, later: bool) -> None:
            msg = self.held.pop(i % len(self.held))
            msg.nack(delay=3600.0 if later else 0.0)
            self.stored[msg.id].state = "delayed" if later else "ready"

        @precondition(lambda self: self.held)
        @rule(i=st.integers(0, 100))
        def release(self, i: int) -> None:
            msg = self.held.pop(i % len(self.held))
            msg.release()
            self.stored[msg.id].state = "ready"

        @precondition(lambda self: self.held)
        @rule(i=st.integers(0, 100))
        def touch(self, i: int) -> None:
            msg = self.held[i % len(self.held)]
            msg.touch(visibility_timeout=LONG_VT)
            assert not msg.settled

        @precondition(lambda self: self.stale)
        @rule(i=st.integers(0, 100), how=st.sampled_from(["ack", "nack", "release", "touch"]))
        def stale_settle(self, i: int, how: str) -> None:
            msg = self.stale.pop(i % len(self.stale))
            before = q.stats()
            settle: dict[str, Callable[[], None]] = {
                "ack": msg.ack,
                "nack": lambda: msg.nack(delay=0),
                "release": msg.release,
                "touch": lambda: msg.touch(visibility_timeout=LONG_VT),
            }
            with pytest.raises(LeaseLost):
                settle[how]()
            assert self._counts(q.stats()) == self._counts(before)

        @precondition(lambda self: any(m.state == "ready" for m in self.stored.values()))
        @rule(t=st.integers(0, 1))
        def lease_expires(self, t: int) -> None:
            """Rarely useful, so only when something is ready: claim briefly and let it lapse."""
            topic = self.topics[t]
            expected = self._next(topic)
            msg = q.get(topic, visibility_timeout=SHORT_VT)
            if expected is None:
                assert msg is None
                return
            assert msg is not None
            assert msg.id == expected.id
            self._claimed(msg)
            time.sleep(EXPIRY_SLEEP)
            self.expired.append(msg)  # the model's state stays "ready"

        # -- the check after every step -------------------------------------------------------

        @invariant()
        def stats_match_the_model(self) -> None:
            want = []
            for topic in self.topics:
                mine = [m for m in self.stored.values() if m.topic == topic]
                ready, delayed, leased = (
                    sum(m.state == s for m in mine) for s in ("ready", "delayed", "leased")
                )
                want.append((ready, delayed, leased, 0))
            have = self._counts(q.stats())
            assert have == want, (
                f"(ready, delayed, leased, dead) of {self.topics}: {have} != model {want}"
            )

        def teardown(self) -> None:
            for msg in self.held:
                msg.release()

    return QueueMachine


def test_queue_matches_an_in_memory_model_under_random_operations(
    make_queue: Callable[..., Queue], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claim_scope, "SWEEP_SECONDS", EXPIRY_SLEEP - SHORT_VT - 0.05)
    q = make_queue(visibility_timeout=LONG_VT, max_attempts=None)
    run_state_machine_as_test(_machine(q), settings=SETTINGS)

"""Worker processes for the concurrency tests: ``python -m tests.procs ROLE --url URL ...``.

Every role builds its own engine and ``Queue`` on tables the test already created, prints
``ready`` and waits for a ``go`` line on stdin, so that all children of a test start their race
at the same moment. A child stops by itself at ``--deadline`` and when its stdin closes (the test
is gone); exceptions are recorded, never swallowed silently.

Roles:
  consume       claim (get, or get_many with --batch) and ack until the topic is empty, or, with
                --until FILE, until FILE exists and the topic holds no message at all
  produce       put --count messages with random priorities (put_many with --batch)
  chaos         a mixed producer or consumer for stress: puts, batch puts, dedup puts, gets,
                acks, nacks, releases, touches and reads; every exception is recorded
  dedup-put     for every key read from stdin, put a message with that dedup key and print the
                result as a JSON line
  claim-hang    claim --batch messages, print them as a JSON line, then hang until killed

Results (ids received, acked, put, errors) are written as JSON to ``--out`` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from squeal import Message, Queue

#: Stop recording (and stop the role) after this many exceptions.
MAX_ERRORS = 20


class Run:
    """What one child did, written as JSON to ``--out`` when it ends."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + float(args.deadline)
        self.received: list[list[Any]] = []  # [id, attempts, payload as text]
        self.acked: list[int] = []
        self.put: list[int | None] = []
        self.batches: list[int] = []
        self.errors: list[str] = []

    def expired(self) -> bool:
        if time.monotonic() < self.deadline:
            return False
        self.errors.append(f"deadline of {self.args.deadline}s exceeded")
        return True

    def record(self, exc: BaseException) -> bool:
        """Record an exception; True while the role may go on."""
        self.errors.append("".join(traceback.format_exception_only(type(exc), exc)).strip())
        return len(self.errors) < MAX_ERRORS

    def got(self, messages: list[Message]) -> None:
        self.batches.append(len(messages))
        for m in messages:
            self.received.append([m.id, m.attempts, m.payload.decode()])

    def save(self) -> None:
        data = {
            "received": self.received,
            "acked": self.acked,
            "put": self.put,
            "batches": self.batches,
            "errors": self.errors,
        }
        out = Path(self.args.out)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(out)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _queue(args: argparse.Namespace) -> Queue:
    q = Queue(
        sa.create_engine(args.url),
        prefix=args.prefix,
        visibility_timeout=args.vt,
        dedup_window=args.dedup_window,
    )
    q.size(args.topic)  # connect and check the schema before the race starts
    return q


def _wait_for_go() -> bool:
    _say("ready")
    return sys.stdin.readline().strip() == "go"


def _finished(q: Queue, args: argparse.Namespace, producers_done: bool) -> bool:
    """Nothing more to do: producers are done and no message of the topic is left at all."""
    if args.until is None:
        return True
    stats = q.stats().get(args.topic)
    return producers_done and (stats is None or stats.total == 0)


def consume(q: Queue, run: Run) -> None:
    args = run.args
    while not run.expired():
        producers_done = args.until is None or os.path.exists(args.until)
        if args.batch == 1:
            one = q.get(args.topic, wait=args.wait)
            messages = [] if one is None else [one]
        else:
            messages = q.get_many(args.topic, args.batch, wait=args.wait)
        if not messages:
            if _finished(q, args, producers_done):
                return
            continue
        run.got(messages)
        if args.hold:
            time.sleep(args.hold)
        if args.batch == 1:
            messages[0].ack()
        else:
            q.ack_many(messages)
        run.acked.extend(m.id for m in messages)


def produce(q: Queue, run: Run) -> None:
    args = run.args
    rnd = random.Random(args.seed)
    sent = 0
    while sent < args.count and not run.expired():
        n = min(args.batch, args.count - sent)
        payloads = [f"{args.name}:{sent + i}".encode() for i in range(n)]
        priority = rnd.randint(-5, 5)
        if n == 1:
            run.put.append(q.put(payloads[0], args.topic, priority=priority))
        else:
            run.put.extend(q.put_many(payloads, args.topic, priority=priority))
        sent += n


def chaos_produce(q: Queue, run: Run) -> None:
    args = run.args
    rnd = random.Random(args.seed)
    for i in range(args.count):
        if run.expired():
            return
        name = f"{args.name}:{i}"
        try:
            kind = rnd.random()
            if kind < 0.5:
                run.put.append(q.put(name.encode(), args.topic, priority=rnd.randint(-3, 3)))
            elif kind < 0.8:
                payloads = [f"{name}.{j}".encode() for j in range(rnd.randint(2, 8))]
                run.put.extend(q.put_many(payloads, args.topic, priority=rnd.randint(-3, 3)))
            else:
                # Keys shared by every producer: some of these puts are deduplicated.
                key = f"k{rnd.randint(0, 30)}"
                run.put.append(q.put(name.encode(), args.topic, dedup_key=key))
        except Exception as exc:
            if not run.record(exc):
                return


def chaos_consume(q: Queue, run: Run) -> None:
    args = run.args
    rnd = random.Random(args.seed)
    while not run.expired():
        try:
            producers_done = os.path.exists(args.until)
            if rnd.random() < 0.5:
                one = q.get(args.topic)
                messages = [] if one is None else [one]
            else:
                messages = q.get_many(args.topic, rnd.randint(2, 10))
            if not messages:
                if _finished(q, args, producers_done):
                    return
                time.sleep(0.005)
                continue
            run.got(messages)
            _settle_randomly(q, rnd, messages, run)
            if rnd.random() < 0.05:
                q.size(args.topic)
        except Exception as exc:
            if not run.record(exc):
                return


def _settle_randomly(q: Queue, rnd: random.Random, messages: list[Message], run: Run) -> None:
    if len(messages) > 1 and rnd.random() < 0.5:
        q.ack_many(messages)
        run.acked.extend(m.id for m in messages)
        return
    for m in messages:
        action = rnd.random()
        if action < 0.7:
            m.ack()
            run.acked.append(m.id)
        elif action < 0.8:
            m.nack(delay=0)
        elif action < 0.9:
            m.release()
        else:
            m.touch()
            m.ack()
            run.acked.append(m.id)


def chaos(q: Queue, run: Run) -> None:
    if run.args.count:
        chaos_produce(q, run)
    else:
        chaos_consume(q, run)


def dedup_put(q: Queue, run: Run) -> None:
    """Answer every key line on stdin with the result of a put carrying that dedup key."""
    args = run.args
    for line in sys.stdin:
        key = line.strip()
        if not key:
            break
        reply: dict[str, Any] = {"key": key}
        try:
            reply["id"] = q.put(f"{args.name}:{key}".encode(), args.topic, dedup_key=key)
        except Exception as exc:
            run.record(exc)
            reply["error"] = run.errors[-1]
        _say(json.dumps(reply))


def claim_hang(q: Queue, run: Run) -> None:
    """Claim, report what was claimed, then never settle it: the test kills this process."""
    args = run.args
    messages = q.get_many(args.topic, args.batch)
    _say(json.dumps([[m.id, m.attempts, m.lease_token] for m in messages]))
    time.sleep(max(0.0, run.deadline - time.monotonic()))


ROLES: dict[str, Callable[[Queue, Run], None]] = {
    "consume": consume,
    "produce": produce,
    "chaos": chaos,
    "dedup-put": dedup_put,
    "claim-hang": claim_hang,
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.procs", description=__doc__)
    p.add_argument("role", choices=sorted(ROLES))
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--out", required=True, help="file the JSON result is written to")
    p.add_argument("--name", default=str(os.getpid()), help="written into payloads")
    p.add_argument("--vt", type=float, default=60.0, help="the queue's visibility_timeout")
    p.add_argument("--dedup-window", type=float, default=None, help="the queue's dedup_window")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--count", type=int, default=0, help="messages to put (producers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait", type=float, default=0.0, help="wait= for get while not finished")
    p.add_argument("--hold", type=float, default=0.0, help="seconds consumers hold before acking")
    p.add_argument("--until", default=None, help="consume until this file exists, then drain")
    p.add_argument("--deadline", type=float, default=60.0, help="seconds before giving up")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    run = Run(args)
    try:
        q = _queue(args)
        if not _wait_for_go():
            return 3
        ROLES[args.role](q, run)
    except BaseException as exc:
        run.record(exc)
        raise
    finally:
        run.save()
    return 1 if run.errors else 0


if __name__ == "__main__":
    sys.exit(main())

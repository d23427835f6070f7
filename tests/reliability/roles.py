"""Child processes for the reliability tests: ``python -m tests.reliability.roles ROLE ...``.

Every role logs its events with :class:`tests.reliability.checker.Log` to ``--log DIR`` (one file
per process) and stops by itself at ``--seconds``. Roles:
  produce   put --count messages (batches of --batch with put_many), logging every id
  consume   claim and settle until --stop FILE exists and the topic is empty; --mix makes it
            nack, release or abandon some messages instead of acking them
  zombie    claim one message, print it as JSON, wait for a line on stdin, then ack it in one
            transaction with an effect row (``ack(connection=...)``) and print the outcome
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from squeal import LeaseLost, Message, Queue
from tests.reliability.checker import Log


def _settle(log: Log, m: Message, how: str) -> None:
    t0 = time.time()
    if how == "ack":
        log.write("acking", id=m.id, token=m.lease_token)
    try:
        if how == "ack":
            m.ack()
        elif how == "nack":
            m.nack(delay=0)
        else:
            m.release()
        ok = True
    except LeaseLost:
        ok = False
    log.write(how, id=m.id, token=m.lease_token, t0=t0, t1=time.time(), ok=ok)


def consume(q: Queue, args: argparse.Namespace, log: Log) -> None:
    rnd = random.Random()
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        t0 = time.time()
        messages = q.get_many(args.topic, args.batch)
        t1 = time.time()
        for m in messages:
            log.write("get", id=m.id, token=m.lease_token, t0=t0, t1=t1, vt=args.vt)
        if not messages:
            if Path(args.stop).exists() and q.size(args.topic) == 0:
                stats = q.stats().get(args.topic)
                if stats is None or stats.total - stats.dead == 0:
                    return
            time.sleep(0.01)
            continue
        for m in messages:
            time.sleep(rnd.random() * args.work)
            roll = rnd.random() if args.mix else 0.0
            if roll < 0.8:
                _settle(log, m, "ack")
            elif roll < 0.88:
                _settle(log, m, "nack")
            elif roll < 0.95:
                _settle(log, m, "release")
            # else: abandoned; its lease expires and it comes back


def produce(q: Queue, args: argparse.Namespace, log: Log) -> None:
    sent = 0
    rnd = random.Random()
    while sent < args.count:
        n = min(args.batch, args.count - sent)
        payloads = [f"{log.pid}:{sent + i}".encode() for i in range(n)]
        t0 = time.time()
        if n == 1:
            ids = [q.put(payloads[0], args.topic, priority=rnd.randint(-2, 2))]
        else:
            ids = list(q.put_many(payloads, args.topic, priority=rnd.randint(-2, 2)))
        for i in ids:
            log.write("put", id=i, t0=t0)
        sent += n


def zombie(q: Queue, args: argparse.Namespace, log: Log) -> None:
    m = q.get(args.topic)
    assert m is not None, "zombie: nothing to claim"
    print(json.dumps({"id": m.id, "token": m.lease_token}), flush=True)
    sys.stdin.readline()
    effects = sa.table(f"{args.prefix}_effects", sa.column("message_id"), sa.column("who"))
    outcome = "acked"
    try:
        with q.engine.begin() as conn:
            conn.execute(sa.insert(effects).values(message_id=m.id, who="zombie"))
            m.ack(connection=conn)
    except LeaseLost:
        outcome = "LeaseLost"
    print(json.dumps({"outcome": outcome}), flush=True)


ROLES = {"consume": consume, "produce": produce, "zombie": zombie}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--topic", default="default")
    parser.add_argument("--log", required=True)
    parser.add_argument("--vt", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--work", type=float, default=0.02)
    parser.add_argument("--mix", action="store_true")
    parser.add_argument("--stop", default="/nonexistent")
    args = parser.parse_args()
    log_dir = Path(args.log)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = Log(log_dir / f"{args.role}-{time.time_ns()}.jsonl")
    q = Queue(sa.create_engine(args.url), prefix=args.prefix, visibility_timeout=args.vt)
    ROLES[args.role](q, args, log)


if __name__ == "__main__":
    main()
